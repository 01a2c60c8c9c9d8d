"""Live events over Socket.IO at ``/ws/socket.io``, as the original node design and InvokeAI serve them.

A client emits ``subscribe_session`` / ``unsubscribe_session`` with ``{"session": "<id>"}``; the
server puts its socket in (takes it out of) the session's room and acknowledges with the plain
socket's reply: ``{"type": "subscribed" | "unsubscribed", "session_id": "<id>"}`` or
``{"type": "error", "message": "...", "session_id": ...}``.  Events arrive as Socket.IO events
named after their type (``node_started``, ...), each with the same object as the plain WebSocket
sends.  Wait for the subscribe acknowledgement before invoking.
"""
from __future__ import annotations

import asyncio
import logging
import types
from typing import Any

import socketio

from nodes.core.untrusted import load_json

from .events import EventHub, Outbound, dumps
from .websocket import MAX_MESSAGE_BYTES

MOUNT = "/ws"
PATH = MOUNT + "/socket.io"
log = logging.getLogger(__name__)


def _load_packet(text: str | bytes, **_options: object) -> object:
    """A client's packet: small and shallow (["subscribe_session", {"session_id": ...}])."""
    return load_json(text, max_bytes=MAX_MESSAGE_BYTES, max_depth=8)


class SocketIOEvents:
    """The Socket.IO transport: one room per session, fed by the hub like the plain WebSocket."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        # cors_allowed_origins left at its default: same origin only, like the rest of the API.
        self.server = socketio.AsyncServer(async_mode="asgi",
                                           json=types.SimpleNamespace(dumps=dumps, loads=_load_packet))
        self.app = socketio.ASGIApp(self.server, socketio_path=PATH)
        self._watched: set[str] = set()  # sessions whose room has members, so the hub feeds it
        # Events go out through one task so that each room gets them in the engine's order.
        self._outbox: asyncio.Queue[Outbound] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.server.on("subscribe_session", self._subscribe)
        self.server.on("unsubscribe_session", self._unsubscribe)
        self.server.on("disconnect", self._disconnect)

    async def _subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = _session_of(data)
        error = self.hub.check(session_id, '"session"')
        if error is not None:
            return _error(session_id, error)
        await self.server.enter_room(sid, session_id)
        if session_id not in self._watched:
            self._watched.add(session_id)
            self.hub.watch(session_id, self._enqueue)
        return {"type": "subscribed", "session_id": session_id}

    async def _unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        session_id = _session_of(data)
        if not isinstance(session_id, str):
            return _error(session_id, self.hub.check(session_id, '"session"'))
        await self._leave(sid, session_id)  # always allowed, also for a session deleted meanwhile
        return {"type": "unsubscribed", "session_id": session_id}

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        for room in self.server.rooms(sid):
            if room in self._watched:
                await self._leave(sid, room)

    async def _leave(self, sid: str, session_id: str) -> None:
        await self.server.leave_room(sid, session_id)
        if session_id in self._watched and next(self.server.manager.get_participants("/", session_id), None) is None:
            self._watched.discard(session_id)
            self.hub.unwatch(session_id, self._enqueue)

    def _enqueue(self, outbound: Outbound) -> None:
        if self._outbox is None:
            self._outbox = asyncio.Queue()
            self._pump = asyncio.create_task(self._send_all(self._outbox))
        self._outbox.put_nowait(outbound)

    async def _send_all(self, outbox: asyncio.Queue[Outbound]) -> None:
        while True:
            message = (await outbox.get()).message
            try:
                await self.server.emit(message["type"], message, room=message["session_id"])
            except Exception:  # one failed send must not silence the room for the rest of the run
                log.exception("Socket.IO emit of %s failed", message["type"])

    async def close(self) -> None:
        """Stop the pump and Socket.IO's background tasks (server shutdown)."""
        if self._pump is not None:
            self._pump.cancel()
        await self.server.shutdown()


def _session_of(data: Any) -> Any:
    return data.get("session") if isinstance(data, dict) else None


def _error(session_id: Any, message: str | None) -> dict[str, Any]:
    return {"type": "error", "session_id": session_id if isinstance(session_id, str) else None,
            "message": message}
