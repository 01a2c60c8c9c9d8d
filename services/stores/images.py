"""The image store: PNG files on disk, recent images in memory.

Every saved PNG carries the producing session's graph and node id in an iTXt chunk, so a graph
can be loaded back from any image the app made (`read_embedded`), and AUTOMATIC1111's `parameters`
text (prompt, sampler, seed, size, model) that other tools and image sites read.
"""
from __future__ import annotations

import io
import json
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from nodes.base import ImageField
from nodes.core.untrusted import UntrustedInputError, load_json, open_image, open_image_info

from services.fsutil import atomic_copy, atomic_write_bytes, remove
from services.lru import LRU

PNG_METADATA_KEY = "invoke-nodes"
A1111_PARAMETERS_KEY = "parameters"


class ImageNotFoundError(KeyError):
    def __str__(self) -> str:
        return f"no image named {self.args[0]!r} in the image store"


class StoredImageError(ValueError):
    """A file in the store that is not an image the app can read (the message names it)."""


class ImageStore(ABC):
    @abstractmethod
    def save(self, image: Image.Image, *, session_id: str | None = None, node_id: str | None = None,
             graph: dict[str, Any] | None = None) -> ImageField: ...

    @abstractmethod
    def put_png(self, name: str, data: bytes) -> None:
        """Keep a PNG made elsewhere (by a worker on another machine) under its name."""

    @abstractmethod
    def get(self, name: str | ImageField) -> Image.Image: ...

    @abstractmethod
    def path(self, name: str | ImageField) -> Path: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def list(self, offset: int = 0, limit: int = 50) -> list[str]:
        """Names, newest first."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def metadata(self, name: str | ImageField) -> dict[str, Any] | None:
        return read_embedded(self.path(name))

    def export(self, name: str | ImageField, destination: str | Path) -> None:
        """Write a copy of a stored PNG (embedded graph included) to a user's file, atomically."""
        path = self.path(name)
        if not path.is_file():
            raise ImageNotFoundError(_name(name))
        atomic_copy(path, destination)

    def thumbnail(self, name: str | ImageField, size: int = 256) -> Image.Image:
        image = self.get(name).copy()
        image.thumbnail((size, size))
        return image


def _name(name: str | ImageField) -> str:
    return name.image_name if isinstance(name, ImageField) else str(name)


def encode_png(image: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_itxt(PNG_METADATA_KEY, json.dumps(metadata), zip=True)
        if isinstance(metadata.get("graph"), dict):  # A1111's text, for other tools and image sites
            from services.importers.a1111 import parameters_from_graph

            parameters = parameters_from_graph(metadata["graph"], metadata.get("node_id"))
            if parameters:
                info.add_itxt(A1111_PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "RGBA", "L", "LA", "I", "I;16", "P", "1"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def read_embedded(path: str | Path) -> dict[str, Any] | None:
    """The metadata a PNG made by this app carries: {"session_id", "node_id", "graph"}; None if absent.
    Raises ValueError with the reason (the caller names the file)."""
    try:
        text = open_image_info(path, PNG_METADATA_KEY)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except UntrustedInputError as exc:
        raise ValueError(str(exc)) from None
    if not text:
        return None
    try:
        data = load_json(text)
    except UntrustedInputError as exc:
        raise ValueError(f"the embedded invoke-nodes graph is refused: {exc}") from None
    return data if isinstance(data, dict) else None


class DiskImageStore(ImageStore):
    def __init__(self, folder: str | Path, cache_size: int = 64) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._cache: LRU[str, Image.Image] = LRU(cache_size)

    def save(self, image: Image.Image, *, session_id: str | None = None, node_id: str | None = None,
             graph: dict[str, Any] | None = None) -> ImageField:
        name = f"{uuid.uuid4().hex}.png"
        metadata = None
        if session_id is not None or graph is not None:
            metadata = {"session_id": session_id, "node_id": node_id, "graph": graph}
        atomic_write_bytes(self.folder / name, encode_png(image, metadata))
        self._cache.put(name, image.copy())
        return ImageField(image_name=name)

    def put_png(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.path(name), data)

    def path(self, name: str | ImageField) -> Path:
        text = _name(name)
        if "/" in text or "\\" in text or text.startswith("."):
            raise ImageNotFoundError(text)
        return self.folder / text

    def get(self, name: str | ImageField) -> Image.Image:
        text = _name(name)
        cached = self._cache.get(text)
        if cached is not None:
            return cached.copy()
        path = self.path(text)
        if not path.is_file():
            raise ImageNotFoundError(text)
        try:
            image = open_image(path)
        except UntrustedInputError as exc:  # a file dropped into the outputs folder, not one the app wrote
            raise StoredImageError(f"stored image {text!r} cannot be read: {exc}") from None
        self._cache.put(text, image)
        return image.copy()

    def exists(self, name: str) -> bool:
        try:
            return self.path(name).is_file()
        except (ImageNotFoundError, OSError):  # OSError: a name too long for the file system
            return False

    def list(self, offset: int = 0, limit: int = 50) -> list[str]:
        files = sorted(self.folder.glob("*.png"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in files[offset: offset + limit]]

    def delete(self, name: str) -> None:
        self._cache.pop(name)
        try:
            remove(self.path(name))
        except FileNotFoundError:
            raise ImageNotFoundError(name) from None
