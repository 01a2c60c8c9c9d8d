"""Live session events, the same on both transports: a plain WebSocket at ``/api/v1/events`` and
Socket.IO at ``/ws/socket.io``.

Each event is one JSON object::

    {"type": "<event>", "session_id": "<id>", "node_id": "<id>" | null, "data": {...}, "time": <unix seconds>}

where <event> is one of node_started, node_progress (data: step, total, message, index and, when
the node sends one, preview: a PNG data URL at most 256 px wide), node_completed (data: state
completed | cached, outputs, index), node_failed (data: state failed | skipped | canceled, error,
index), session_completed (data: errors, complete) and session_canceled.

Subscribe, and wait until the server confirms it, before invoking, so that no event of the run is
missed.  With a token configured, a socket needs it like every request (``?token=...`` or the
Authorization header).
"""
from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
from typing import Any, Callable

from services.engine.events import Event
from services.stores.sessions import SessionNotFoundError

from .schemas import SESSION_ID_RE

PREVIEW_SIZE = 256

# Both transports serialise with this, so a value JSON cannot hold reaches either as the same string.
dumps = functools.partial(json.dumps, default=str)


class Outbound:
    """One event as both transports send it; built once per event, whichever sockets receive it."""

    def __init__(self, event: Event) -> None:
        data = dict(event.data)
        preview = data.get("preview")
        if preview is not None and hasattr(preview, "save"):
            data["preview"] = _png_data_url(preview)
        self.message = {"type": event.type, "session_id": event.session_id, "node_id": event.node_id,
                        "data": data, "time": event.time}

    @functools.cached_property
    def text(self) -> str:
        """The plain socket's JSON text frame (encoded for the first such socket, then shared)."""
        return dumps(self.message)


def _png_data_url(image: Any) -> str:
    image = image.copy()
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


Listener = Callable[[Outbound], None]


class EventHub:
    """The one event source of both transports: bridges the invoker's events (callbacks on the
    invoker thread) to listeners on the asyncio loop.

    One invoker subscription per watched session, shared by all its listeners (a plain socket, or the
    Socket.IO room of that session); it is dropped when the last listener leaves.
    """

    def __init__(self, invoker: Any, find_session: Any) -> None:
        self.invoker = invoker
        self.find_session = find_session  # raises SessionNotFoundError
        self.loop: asyncio.AbstractEventLoop | None = None
        self._listeners: dict[str, set[Listener]] = {}
        self._tokens: dict[str, object] = {}

    def check(self, session_id: Any, field: str) -> str | None:
        """Why `session_id` (given as `field` of a client's message) cannot be watched, or None."""
        if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
            return f"{field} must be a session id string"
        try:
            self.find_session(session_id)
        except (SessionNotFoundError, ValueError) as exc:  # ValueError: a stored session that cannot be read
            return str(exc)
        return None

    def watch(self, session_id: str, listener: Listener) -> None:
        """Call `listener` on this loop with every later event of the session, in order."""
        self.loop = asyncio.get_running_loop()
        self._listeners.setdefault(session_id, set()).add(listener)
        if session_id not in self._tokens:
            self._tokens[session_id] = self.invoker.subscribe(self._on_event, session_id=session_id)

    def unwatch(self, session_id: str, listener: Listener) -> None:
        listeners = self._listeners.get(session_id)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[session_id]
            self.invoker.unsubscribe(self._tokens.pop(session_id))

    def close(self) -> None:
        for token in self._tokens.values():
            self.invoker.unsubscribe(token)
        self._tokens.clear()
        self._listeners.clear()

    def _on_event(self, event: Event) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        outbound = Outbound(event)  # the preview's PNG is encoded here, off the loop, once
        try:
            loop.call_soon_threadsafe(self._deliver, event.session_id, outbound)
        except RuntimeError:  # the loop closed between the check and the call (server shutting down)
            pass

    def _deliver(self, session_id: str, outbound: Outbound) -> None:
        for listener in list(self._listeners.get(session_id, ())):
            listener(outbound)
