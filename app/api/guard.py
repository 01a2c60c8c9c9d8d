"""The ASGI guard in front of every request and socket: host check, token, body size.

- Token: when the server has one, every HTTP request and socket must carry it, as
  ``Authorization: Bearer T``, ``?token=T`` or the cookie a ``?token=`` request sets (so that a
  browser opened on ``/docs?token=T`` or ``/static/test.html?token=T`` keeps working).
- Host: a server bound to loopback answers only requests addressed to a loopback name, so a web
  page cannot reach it through DNS rebinding.
- Body size: bodies over the limit get 413 before they are read (Content-Length) or as soon as
  they pass it (chunked).
"""
from __future__ import annotations

import hmac
import json
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "invoke_nodes_token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class BodyTooLarge(HTTPException):
    """Raised from receive() inside a route; FastAPI passes HTTPExceptions to the error handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: frozenset[str] | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in self.allowed_hosts:
            await _refuse(scope, receive, send, 400, "bad_host", "this server answers only requests to a loopback address")
            return
        from_query = None
        if self.token is not None:
            given, from_query = _given_token(scope, headers)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                await _refuse(scope, receive, send, 401, "unauthorized",
                              "a token is required: Authorization: Bearer <token> or ?token=<token>")
                return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body_bytes:
            await _refuse(scope, receive, send, 413, "too_large", f"request body is larger than {self.max_body_bytes} bytes")
            return
        await self.app(scope, self._limited(receive), self._with_cookie(send, from_query))

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited

    @staticmethod
    def _with_cookie(send: Send, token: str | None) -> Send:
        if token is None:
            return send

        async def send_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
            await send(message)

        return send_cookie


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _given_token(scope: Scope, headers: dict[str, str]) -> tuple[str | None, str | None]:
    """(the token the client gave, the same when it came in the query string: it becomes a cookie)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        return query[0], query[0]
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is the same as none
        return None, None
    morsel = cookie.get(COOKIE)
    return (morsel.value if morsel else None), None


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, error: str, message: str) -> None:
    if scope["type"] == "websocket":
        # Closing before accept makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
        return
    body = json.dumps({"error": error, "message": message}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
