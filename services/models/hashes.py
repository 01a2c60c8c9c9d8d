"""Model file hashes as other tools print them, computed once per file and cached with its size and
mtime (a 7 GB checkpoint takes tens of seconds to hash; the cache makes the next import free).

- sha256: AUTOMATIC1111's "Model hash" is its first 10 hex digits (InvokeAI and civitai use it whole);
- autov1: A1111's old 8-hex hash, sha256 of 64 KiB at offset 1 MiB;
- addnet: sha256 of a .safetensors file after its header (A1111's "Lora hashes").
Pure hashlib/json: the canvas process may call it without importing torch.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
from pathlib import Path

from services.fsutil import atomic_write_text

_BLOCK = 1 << 20


def file_hashes(path: str | Path) -> dict[str, str]:
    """The three hashes of one file, read once."""
    path = Path(path)
    full, addnet = hashlib.sha256(), hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(0x100000)
        autov1 = hashlib.sha256(handle.read(0x10000)).hexdigest()[:8]
        handle.seek(0)
        skip = 0
        if path.suffix.lower() == ".safetensors":
            head = handle.read(8)
            full.update(head)
            skip = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        while block := handle.read(_BLOCK):
            full.update(block)
            if skip >= len(block):
                skip -= len(block)
                continue
            addnet.update(block[skip:])
            skip = 0
    return {"sha256": full.hexdigest(), "autov1": autov1, "addnet": addnet.hexdigest()}


class HashCache:
    """file_hashes with a JSON cache keyed by path, size and mtime (a changed file is hashed again)."""

    def __init__(self, cache_file: str | Path) -> None:
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            try:
                data = json.loads(self.cache_file.read_text("utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def get(self, path: str | Path) -> dict[str, str]:
        """Hashes of a file; OSError when it cannot be read."""
        stat = Path(path).stat()
        key = str(Path(path).resolve())
        with self._lock:
            entry = self._load().get(key)
            if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
                return dict(entry["hashes"])  # type: ignore[arg-type]
        hashes = file_hashes(path)
        with self._lock:
            entries = self._load()
            entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hashes": hashes}
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.cache_file, json.dumps(entries))
        return hashes
