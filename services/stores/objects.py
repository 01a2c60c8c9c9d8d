"""The object store: intermediate values that are not images (latents, conditioning tensors).

Kept in memory with an LRU bound.  A cached node output that names an object that was evicted
is treated as stale by the invoker, which runs the node again.
"""
from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from typing import Any

from services.lru import LRU


class ObjectNotFoundError(KeyError):
    def __str__(self) -> str:
        return f"object {self.args[0]!r} is no longer held (it was evicted); run the producing node again"


class ObjectStore(ABC):
    @abstractmethod
    def put(self, obj: Any, prefix: str = "obj") -> str: ...

    @abstractmethod
    def adopt(self, name: str, obj: Any) -> None:
        """Keep an object made elsewhere (on another cluster worker) under its name."""

    @abstractmethod
    def get(self, name: str) -> Any: ...

    @abstractmethod
    def exists(self, name: str) -> bool: ...


class MemoryObjectStore(ObjectStore):
    def __init__(self, capacity: int = 256) -> None:
        self._items: LRU[str, Any] = LRU(capacity)

    def put(self, obj: Any, prefix: str = "obj") -> str:
        name = f"{prefix}-{uuid.uuid4().hex}"
        self._items.put(name, obj)
        return name

    def adopt(self, name: str, obj: Any) -> None:
        self._items.put(name, obj)

    def get(self, name: str) -> Any:
        obj = self._items.get(name)
        if obj is None:
            raise ObjectNotFoundError(name)
        return obj

    def exists(self, name: str) -> bool:
        return name in self._items
