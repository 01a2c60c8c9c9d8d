"""Reading input a user or a stranger hands over: JSON with size and depth limits, images with
Pillow's decompression-bomb check turned into a clear refusal.  Every file the app opens on
someone else's word (sessions, embedded graphs, uploads, image files) goes through here, so the
limits live in one place.  Light (json and PIL only): the services and the nodes both use it.
"""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

from PIL import Image

MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64  # a session is ~6 levels deep; list values add a few
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a small file can still decode to a huge image (a "PNG bomb")


class UntrustedInputError(ValueError):
    """Input refused; the message says why (the caller adds which file)."""


def _no_constant(name: str) -> Any:
    raise UntrustedInputError(f"{name} is not a number JSON allows")


def load_json(data: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads that refuses NaN/Infinity, documents over max_bytes and nesting deeper than
    max_depth (deep data would later overflow the stack of whatever walks it)."""
    if len(data) > max_bytes:
        raise UntrustedInputError(f"too large ({len(data)} bytes; at most {max_bytes})")
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise UntrustedInputError(f"nested deeper than {max_depth} levels") from None
    except UntrustedInputError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise UntrustedInputError(f"not valid JSON: {exc}") from None
    _check_depth(value, max_depth)
    return value


def _check_depth(value: Any, max_depth: int) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise UntrustedInputError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def open_image(source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A decoded copy of an image file (or bytes).  Refuses, with UntrustedInputError, anything that
    is not an image Pillow reads and images over max_pixels (checked from the header, before any
    pixel is decoded).  FileNotFoundError passes through."""
    handle_source: Any = io.BytesIO(source) if isinstance(source, bytes) else regular_file(source)
    try:
        with Image.open(handle_source) as handle:
            check_size(handle, max_pixels)
            handle.load()
            return handle.copy()
    except (UntrustedInputError, FileNotFoundError):
        raise
    except Image.DecompressionBombError:
        raise UntrustedInputError(f"the image is larger than {max_pixels} pixels (a decompression bomb?)") from None
    except PermissionError:
        raise UntrustedInputError("permission denied") from None
    except Exception as exc:  # Pillow raises many types for bad data (OSError, SyntaxError, ValueError, ...)
        raise UntrustedInputError(_unreadable(exc)) from None


def open_image_info(path: str | os.PathLike[str], key: str) -> str | None:
    """The text chunk `key` of an image file, without decoding its pixels; the same refusals as open_image."""
    try:
        with Image.open(regular_file(path)) as handle:
            check_size(handle, MAX_IMAGE_PIXELS)
            text = handle.info.get(key) or getattr(handle, "text", {}).get(key)
    except (UntrustedInputError, FileNotFoundError):
        raise
    except Image.DecompressionBombError:
        raise UntrustedInputError(f"the image is larger than {MAX_IMAGE_PIXELS} pixels (a decompression bomb?)") from None
    except Exception as exc:
        raise UntrustedInputError(_unreadable(exc)) from None
    return text if isinstance(text, str) else None


def open_image_texts(source: str | os.PathLike[str] | bytes) -> dict[str, str]:
    """Every text chunk of an image file (or bytes); the same refusals as open_image.  PNG text
    may follow the pixels, so they are decoded (after the size check): a truncated file is refused."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else regular_file(source)) as handle:
            check_size(handle, MAX_IMAGE_PIXELS)
            if hasattr(handle, "text"):  # PNG: reads every chunk up to the end, text after the pixels too
                texts = dict(handle.text)
            else:
                texts = {}
            texts.update((k, v) for k, v in handle.info.items() if isinstance(v, str) and k not in texts)
    except (UntrustedInputError, FileNotFoundError):
        raise
    except Image.DecompressionBombError:
        raise UntrustedInputError(f"the image is larger than {MAX_IMAGE_PIXELS} pixels (a decompression bomb?)") from None
    except Exception as exc:
        raise UntrustedInputError(_unreadable(exc)) from None
    return {k: v for k, v in texts.items() if isinstance(v, str)}


def _unreadable(exc: Exception) -> str:
    if isinstance(exc, ValueError) and "too large" in str(exc).lower():  # Pillow's text-chunk limit
        return f"its embedded text is too large ({exc})"
    detail = str(exc)
    if "cannot identify image file" in detail:  # Pillow names the file again: the caller already does
        detail = "cannot identify the image format"
    return f"not an image Pillow can read ({type(exc).__name__}: {detail})"


def regular_file(path: str | os.PathLike[str]) -> Path:
    """The path, once it is known to be a regular file: opening a FIFO or a device would block or
    never end.  FileNotFoundError (a dangling link too) passes through."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except PermissionError:
        raise UntrustedInputError("permission denied") from None
    if stat.S_ISDIR(mode):
        raise UntrustedInputError("a folder, not a file")
    if not stat.S_ISREG(mode):
        raise UntrustedInputError("not a regular file (a FIFO, socket or device)")
    return path


def check_size(handle: Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    if handle.width * handle.height > max_pixels:
        raise UntrustedInputError(f"the image is {handle.width}x{handle.height} pixels; at most {max_pixels} "
                                  "pixels are accepted (a decompression bomb?)")
