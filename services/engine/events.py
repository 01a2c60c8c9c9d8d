"""The event bus: node started / progress / completed / failed, session completed / canceled.

Thread-safe; callbacks run on the emitting thread (the invoker's worker), so a GUI must hand
events to its own thread (the canvas drains a queue in its render loop).
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

NODE_STARTED = "node_started"
NODE_PROGRESS = "node_progress"
NODE_COMPLETED = "node_completed"  # data["state"]: completed | cached
NODE_FAILED = "node_failed"  # data["state"]: failed | skipped | canceled; data["error"]
SESSION_COMPLETED = "session_completed"
SESSION_CANCELED = "session_canceled"
EVENT_TYPES = (NODE_STARTED, NODE_PROGRESS, NODE_COMPLETED, NODE_FAILED, SESSION_COMPLETED, SESSION_CANCELED)


@dataclass(frozen=True, slots=True)
class Event:
    """`data["index"]`, where present, is the fan-out position: ((iterate node id, item), ...)."""

    type: str
    session_id: str
    node_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


Callback = Callable[[Event], None]


class EventBus(ABC):
    @abstractmethod
    def subscribe(self, callback: Callback, session_id: str | None = None) -> object:
        """Call `callback` for events of one session (None: of every session).  Returns a token."""

    @abstractmethod
    def unsubscribe(self, token: object) -> None: ...

    @abstractmethod
    def emit(self, event: Event) -> None: ...

    @abstractmethod
    def wants(self, session_id: str) -> bool:
        """Is anybody listening to this session (lets emitters skip building events)?"""


class LocalEventBus(EventBus):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str | None, dict[int, Callback]] = {}
        self._next = 0

    def subscribe(self, callback: Callback, session_id: str | None = None) -> object:
        with self._lock:
            self._next += 1
            self._subscribers.setdefault(session_id, {})[self._next] = callback
            return (session_id, self._next)

    def unsubscribe(self, token: object) -> None:
        session_id, number = token  # type: ignore[misc]
        with self._lock:
            group = self._subscribers.get(session_id, {})
            group.pop(number, None)
            if not group:
                self._subscribers.pop(session_id, None)

    def wants(self, session_id: str) -> bool:
        return None in self._subscribers or session_id in self._subscribers

    def emit(self, event: Event) -> None:
        with self._lock:
            callbacks = [*self._subscribers.get(None, {}).values(), *self._subscribers.get(event.session_id, {}).values()]
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # a broken subscriber must not stop the invoker
                log.exception("event subscriber failed on %s", event.type)
