"""A generator of broken, hostile and odd files for the hostile-input tests (test_hostile.py).

`session_files`, `image_files` and `model_files` write every case into a folder and return
{case name: Case}.  A case's `reason` is a regular expression the refusal must match (besides the
file's name).  Pickle payloads, when unpickled, create `marker` — the tests assert it never exists.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

PNG_KEY = "invoke-nodes"  # services.stores.images.PNG_METADATA_KEY, spelled out: the generator trusts nothing
RUNNING_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass(frozen=True)
class Case:
    path: Path
    reason: str  # regular expression


class Payload:
    """Unpickling this creates the marker file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)})


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def session_doc(**overrides) -> dict:
    doc = {"format": "invoke-nodes/session", "schema_version": 1, "id": "hostile",
           "graph": {"nodes": [{"id": "1", "type": "integer", "value": 3}], "links": []}}
    doc.update(overrides)
    return doc


def png_with_text(text: str | None, size: tuple[int, int] = (4, 4)) -> bytes:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_itxt(PNG_KEY, text, zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels (10 gigapixels): a few hundred bytes on disk."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = zlib.compress(b"\0" * (side + 1))  # one scanline; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")


def _special(folder: Path, name: str, kind: str) -> Path:
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        path.symlink_to(folder / "does-not-exist")
    elif kind == "folder":  # where a file is expected (root reads any file, so "unreadable" is this)
        path.mkdir()
    return path


def session_files(folder: Path) -> dict[str, Case]:
    """Files handed to `run`, `load`, the canvas' Open: saved sessions and PNGs with graphs."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[bytes | str | None, str]] = {
        "empty.json": (b"", "not valid JSON"),
        "binary.json": (bytes(range(256)) * 4, "not valid JSON"),
        "deep.json": (deep_json(), "nested deeper than"),
        "nan.json": (json.dumps(session_doc(graph={"nodes": [{"id": "1", "type": "float", "value": float("nan")}],
                                                   "links": []})), "NaN is not a number JSON allows"),
        "future.json": (json.dumps(session_doc(schema_version=99)), "newer invoke-nodes"),
        "slash-id.json": (json.dumps(session_doc(id="../../evil")), "session id '../../evil' may only hold"),
        "node-slash.json": (json.dumps(session_doc(graph={"nodes": [{"id": "a/../b", "type": "integer"}], "links": []})),
                            "path separators"),
        "foreign.json": (json.dumps({"hello": "world"}), "not an invoke-nodes session"),
        "bomb.png": (bomb_png(), "decompression bomb"),
        "truncated.png": (png_with_text(json.dumps({"graph": {"nodes": [], "links": []}}))[:60], "not an image|carries no"),
        "not-an-image.png": (b"this is text, not a PNG", "not an image Pillow can read"),
        "no-graph.png": (png_with_text(None), "carries no invoke-nodes graph"),
        "broken-graph.png": (png_with_text("{not json"), "not valid JSON"),
        "deep-graph.png": (png_with_text('{"graph": {"nodes": ' + deep_json(5000) + "}}"),
                           "nested deeper than"),
        "huge-graph.png": (png_with_text(json.dumps({"graph": {"nodes": [], "links": []}, "pad": "x" * 4_000_000})),
                           "embedded text is too large"),
        "fifo.json": (None, "not a regular file"),
        "dangling.json": (None, "No such file"),
        "folder.json": (None, "a folder"),
    }
    out = {}
    for name, (content, reason) in cases.items():
        if content is None:
            path = _special(folder, name, name.split(".")[0])
        else:
            path = folder / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        out[name] = Case(path, reason)
    return out


def image_files(folder: Path) -> dict[str, Case]:
    """Files handed to load_image, the upload route, or dropped into the outputs folder."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {
        "bomb.png": (bomb_png(), "decompression bomb"),
        "truncated.png": (png_with_text(None, (64, 64))[:80], "not an image Pillow can read"),
        "not-an-image.png": (b"GIF89a but not really", "not an image Pillow can read"),
        "empty.png": (b"", "not an image Pillow can read"),
        "fifo.png": (None, "not a regular file"),
        "dangling.png": (None, "(?i)no such file"),
        "folder.png": (None, "a folder"),
    }
    out = {}
    for name, (content, reason) in cases.items():
        path = _special(folder, name, name.split(".")[0]) if content is None else folder / name
        if content is not None:
            path.write_bytes(content)
        out[name] = Case(path, reason)
    return out


def model_files(folder: Path, marker: Path) -> dict[str, Case]:
    """Files in a models folder: each must be listed as unrecognised with its reason, none loaded."""
    folder.mkdir(parents=True, exist_ok=True)

    def safetensors(header: object, data: bytes = b"", claimed: int | None = None) -> bytes:
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data

    cases = {
        "evil.ckpt": (pickle_payload(marker), "needs pickled code to load"),
        "evil.pth": (pickle_payload(marker), "needs pickled code to load"),
        "no-shape.safetensors": (safetensors({"w": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4), "has no valid shape"),
        "past-the-end.safetensors": (safetensors({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 4),
                                     "points outside the file"),
        "long-header.safetensors": (safetensors({}, claimed=50_000_000), "header claims"),
        "deep-header.safetensors": (struct.pack("<Q", 20_000) + deep_json(10_000).encode(), "nested deeper than"),
        "tiny.safetensors": (b"abc", "too short"),
        "fifo.safetensors": (None, "not a regular file"),
        "dangling.safetensors": (None, "does not exist"),
    }
    out = {}
    for name, (content, reason) in cases.items():
        path = _special(folder, name, name.split(".")[0]) if content is None else folder / name
        if content is not None:
            path.write_bytes(content)
        out[name] = Case(path, reason)
    return out


def scan_within(manager, seconds: float) -> None:
    """manager.rescan() on a thread: a FIFO read blocks forever, so a hang fails the test instead."""
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            manager.rescan()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the model scan hangs"
    assert not errors, errors


def snapshot(*folders: Path) -> dict[str, tuple[str, int, int]]:
    """Every entry under the folders (links not followed) with its kind, size and mtime."""
    seen = {}
    for folder in folders:
        for current, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = Path(current) / name
                info = path.lstat()
                seen[str(path)] = (oct(info.st_mode), info.st_size, info.st_mtime_ns)
    return seen
