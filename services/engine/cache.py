"""The output cache: node outputs keyed by a content hash of everything that determines them
(node type and version, every input value, linked values included, and the node's cache salt).
Linked images and tensors are references whose names change whenever their producer re-runs,
so an unchanged key means unchanged ancestors too."""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any

from services.lru import LRU


def cache_key(node_type: str, version: str, values: dict[str, Any], salt: Any = None) -> str:
    # Values are JSON data (node values and model dumps), whose repr is deterministic and much
    # cheaper than json.dumps.  Top-level fields are sorted; nested dumps have their class's order.
    text = repr((node_type, version, sorted(values.items()), salt))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class OutputCache(ABC):
    @abstractmethod
    def get(self, key: str) -> list[dict[str, Any]] | None: ...

    @abstractmethod
    def put(self, key: str, outputs: list[dict[str, Any]]) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...


class MemoryOutputCache(OutputCache):
    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: LRU[str, list[dict[str, Any]]] = LRU(capacity)

    def get(self, key: str) -> list[dict[str, Any]] | None:
        return self._items.get(key)

    def put(self, key: str, outputs: list[dict[str, Any]]) -> None:
        self._items.put(key, outputs)

    def clear(self) -> None:
        self._items = LRU(self.capacity)
