"""Live session events over a plain WebSocket at ``/api/v1/events``.

A plain WebSocket (not Socket.IO) so that a browser needs no client library and any language can
subscribe with its standard WebSocket client.  Messages are JSON text frames.

Client to server::

    {"action": "subscribe",   "session_id": "<id>"}
    {"action": "unsubscribe", "session_id": "<id>"}

Server to client::

    {"type": "subscribed",   "session_id": "<id>"}          # events of that session follow
    {"type": "unsubscribed", "session_id": "<id>"}
    {"type": "error", "message": "...", "session_id": "<id>" | null}
    {"type": "<event>", "session_id": "<id>", "node_id": "<id>" | null, "data": {...}, "time": <unix seconds>}

where <event> is one of node_started, node_progress (data: step, total, message, index and, when
the node sends one, preview: a PNG data URL at most 256 px wide), node_completed (data: state
completed | cached, outputs, index), node_failed (data: state failed | skipped | canceled, error,
index), session_completed (data: errors, complete) and session_canceled.

Subscribe and wait for "subscribed" before invoking, so that no event of the run is missed.
With a token configured the socket URL needs ``?token=...``.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

from starlette.websockets import WebSocket

from services.engine.events import Event
from services.stores.sessions import SessionNotFoundError

from .schemas import SESSION_ID_RE

PREVIEW_SIZE = 256
QUEUE_LIMIT = 2000  # messages waiting for one slow client before it is disconnected


def encode_event(event: Event) -> str:
    """The JSON text frame of an event (runs on the invoker thread, once per event)."""
    data = dict(event.data)
    preview = data.get("preview")
    if preview is not None and hasattr(preview, "save"):
        data["preview"] = _png_data_url(preview)
    message = {"type": event.type, "session_id": event.session_id, "node_id": event.node_id,
               "data": data, "time": event.time}
    return json.dumps(message, default=str)


def _png_data_url(image: Any) -> str:
    image = image.copy()
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Connection:
    """One socket's outbound queue; every frame goes through it so replies and events keep their order."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_LIMIT)
        self.sessions: set[str] = set()
        self.closing = False

    def push(self, text: str | None) -> None:
        if self.closing:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            # A client that does not read must not make the server hold every event in memory:
            # drop what waits, stop its subscriptions and let the pump close the socket.
            self.sessions.clear()
            self.closing = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def reply(self, kind: str, session_id: str | None = None, **extra: Any) -> None:
        self.push(json.dumps({"type": kind, "session_id": session_id, **extra}))

    async def pump(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None:
                await self.websocket.close(code=1013, reason="client too slow")
                return
            await self.websocket.send_text(text)


class EventHub:
    """Bridges the invoker's events (callbacks on the invoker thread) to sockets on the asyncio loop.

    One invoker subscription per watched session, shared by all its sockets; it is dropped when the
    last socket leaves.
    """

    def __init__(self, invoker: Any, find_session: Any) -> None:
        self.invoker = invoker
        self.find_session = find_session  # raises SessionNotFoundError
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watchers: dict[str, set[Connection]] = {}
        self._tokens: dict[str, object] = {}

    def attach(self, conn: Connection, session_id: str) -> None:
        self.loop = asyncio.get_running_loop()
        watchers = self._watchers.setdefault(session_id, set())
        watchers.add(conn)
        conn.sessions.add(session_id)
        if session_id not in self._tokens:
            self._tokens[session_id] = self.invoker.subscribe(self._on_event, session_id=session_id)

    def detach(self, conn: Connection, session_id: str) -> None:
        conn.sessions.discard(session_id)
        watchers = self._watchers.get(session_id)
        if watchers is None:
            return
        watchers.discard(conn)
        if not watchers:
            del self._watchers[session_id]
            self.invoker.unsubscribe(self._tokens.pop(session_id))

    def detach_all(self, conn: Connection) -> None:
        for session_id in [s for s, watchers in self._watchers.items() if conn in watchers]:
            self.detach(conn, session_id)

    def close(self) -> None:
        for token in self._tokens.values():
            self.invoker.unsubscribe(token)
        self._tokens.clear()
        self._watchers.clear()

    def _on_event(self, event: Event) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        text = encode_event(event)
        try:
            loop.call_soon_threadsafe(self._deliver, event.session_id, text)
        except RuntimeError:  # the loop closed between the check and the call (server shutting down)
            pass

    def _deliver(self, session_id: str, text: str) -> None:
        for conn in list(self._watchers.get(session_id, ())):
            if session_id in conn.sessions:
                conn.push(text)

    async def serve(self, websocket: WebSocket) -> None:
        """Run one socket until the client leaves or the pump gives up on it."""
        await websocket.accept()
        conn = Connection(websocket)
        tasks = {asyncio.create_task(conn.pump()), asyncio.create_task(self._receive(conn))}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.detach_all(conn)
            for task in tasks:
                task.cancel()
            # Collect the tasks' ends (a send to a socket that just closed raises); nothing to report.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, conn: Connection) -> None:
        while True:
            message = await conn.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                conn.reply("error", message="send JSON messages as text frames")
                continue
            self._handle(conn, message["text"])

    def _handle(self, conn: Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            conn.reply("error", message="not JSON: send {\"action\": \"subscribe\", \"session_id\": \"...\"}")
            return
        if not isinstance(message, dict):
            conn.reply("error", message="a message must be a JSON object")
            return
        action, session_id = message.get("action"), message.get("session_id")
        if action not in ("subscribe", "unsubscribe"):
            conn.reply("error", message=f"unknown action {action!r} (subscribe, unsubscribe)")
            return
        if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
            conn.reply("error", message="session_id must be a session id string")
            return
        if action == "unsubscribe":
            self.detach(conn, session_id)
            conn.reply("unsubscribed", session_id)
            return
        try:
            self.find_session(session_id)
        except (SessionNotFoundError, ValueError) as exc:  # ValueError: a stored session that cannot be read
            conn.reply("error", session_id, message=str(exc))
            return
        self.attach(conn, session_id)
        conn.reply("subscribed", session_id)
