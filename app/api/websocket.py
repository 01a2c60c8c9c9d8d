"""Live events over a plain WebSocket at ``/api/v1/events``: no client library needed.

Messages are JSON text frames.  Client to server::

    {"action": "subscribe",   "session_id": "<id>"}
    {"action": "unsubscribe", "session_id": "<id>"}

Server to client: the events of the subscribed sessions, and the replies::

    {"type": "subscribed",   "session_id": "<id>"}          # events of that session follow
    {"type": "unsubscribed", "session_id": "<id>"}
    {"type": "error", "message": "...", "session_id": "<id>" | null}
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.websockets import WebSocket

from nodes.core.untrusted import load_json

from .events import EventHub, Outbound

MAX_MESSAGE_BYTES = 64 * 1024  # a client's message is one small object: subscribe / unsubscribe

QUEUE_LIMIT = 2000  # messages waiting for one slow client before it is disconnected


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
            # drop what waits, take no more and let the pump close the socket.
            self.closing = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def deliver(self, outbound: Outbound) -> None:
        """The hub's listener for each session this socket subscribed to."""
        self.push(outbound.text)

    def reply(self, kind: str, session_id: str | None = None, **extra: Any) -> None:
        self.push(json.dumps({"type": kind, "session_id": session_id, **extra}))

    async def pump(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None:
                await self.websocket.close(code=1013, reason="client too slow")
                return
            await self.websocket.send_text(text)


async def serve(hub: EventHub, websocket: WebSocket) -> None:
    """Run one socket until the client leaves or the pump gives up on it."""
    await websocket.accept()
    conn = Connection(websocket)
    tasks = {asyncio.create_task(conn.pump()), asyncio.create_task(_receive(hub, conn))}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for session_id in conn.sessions:
            hub.unwatch(session_id, conn.deliver)
        for task in tasks:
            task.cancel()
        # Collect the tasks' ends (a send to a socket that just closed raises); nothing to report.
        await asyncio.gather(*tasks, return_exceptions=True)


async def _receive(hub: EventHub, conn: Connection) -> None:
    while True:
        message = await conn.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is None:
            conn.reply("error", message="send JSON messages as text frames")
            continue
        _handle(hub, conn, message["text"])


def _handle(hub: EventHub, conn: Connection, text: str) -> None:
    try:
        message = load_json(text, max_bytes=MAX_MESSAGE_BYTES, max_depth=4)  # {"action": ..., "session_id": ...}
    except ValueError as exc:  # not JSON, too deep or too big (UntrustedInputError)
        conn.reply("error", message=f"not JSON ({exc}): send {{\"action\": \"subscribe\", \"session_id\": \"...\"}}")
        return
    if not isinstance(message, dict):
        conn.reply("error", message="a message must be a JSON object")
        return
    action, session_id = message.get("action"), message.get("session_id")
    if action not in ("subscribe", "unsubscribe"):
        conn.reply("error", message=f"unknown action {action!r} (subscribe, unsubscribe)")
        return
    if action == "unsubscribe" and isinstance(session_id, str):
        # Leaving always works, also for a session deleted meanwhile.
        if session_id in conn.sessions:
            conn.sessions.discard(session_id)
            hub.unwatch(session_id, conn.deliver)
        conn.reply("unsubscribed", session_id)
        return
    error = hub.check(session_id, "session_id")
    if error is not None:
        conn.reply("error", session_id if isinstance(session_id, str) else None, message=error)
        return
    conn.sessions.add(session_id)
    hub.watch(session_id, conn.deliver)
    conn.reply("subscribed", session_id)
