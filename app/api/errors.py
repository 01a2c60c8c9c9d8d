"""One JSON error shape (schemas.ErrorBody) for everything the API refuses.

Engine errors map to status codes here, once, instead of try/except in every route.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from services.engine.graph import GraphError
from services.stores.images import ImageNotFoundError
from services.stores.sessions import SessionNotFoundError

from .schemas import ErrorBody

log = logging.getLogger(__name__)

# Documented on every route so that clients (and schemathesis) know the error answers.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "Malformed request"), (401, "Missing or wrong token"), (404, "No such session, image or node type"),
        (409, "Conflicts with a running session"), (413, "Upload too large"), (415, "Not an image"),
        (422, "Invalid graph, node, field value or link (the body names the node and field)"),
        (507, "The server could not write its files (disk full or failing): the change was not saved"))
}


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": error, "message": message, **details}


def error_response(status: int, error: str, message: str, **details: Any) -> JSONResponse:
    body = ErrorBody(error=error, message=message, **details).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status)


async def json_body_is_storable(request: Request) -> None:
    """Refuse JSON that parses but cannot be stored or sent back: NaN / Infinity (Python's parser
    takes them, JSON has none) and lone surrogates (\\ud800, which UTF-8 cannot encode)."""
    if request.method not in ("POST", "PUT", "PATCH") or "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = await request.json()  # cached: FastAPI parsed it already
    except ValueError:
        return  # FastAPI reports the parse error itself
    found = _unstorable(body)
    if found is not None:
        where, problem = found
        raise ApiError(422, "invalid_request", f"{where or 'body'}: {problem}", field=where.rsplit(".", 1)[-1] or None)


def _unstorable(body: Any) -> tuple[str, str] | None:
    """(dotted path, problem) of the first value JSON cannot carry; None when all can."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where, f"{value} is not a JSON number"
        if isinstance(value, str) and not _utf8(value):
            return where, "text with a lone surrogate (\\ud800-\\udfff) cannot be stored"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _utf8(key):
                    return where, "a key with a lone surrogate cannot be stored"
                stack.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(value))
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, **exc.body)

    @app.exception_handler(GraphError)
    async def graph_error(request: Request, exc: GraphError) -> JSONResponse:
        return error_response(422, "invalid_graph", str(exc), node_id=exc.node_id, node_type=exc.node_type,
                              field=exc.field, reason=exc.reason)

    @app.exception_handler(SessionNotFoundError)
    async def session_not_found(request: Request, exc: SessionNotFoundError) -> JSONResponse:
        return error_response(404, "session_not_found", str(exc))

    @app.exception_handler(ImageNotFoundError)
    async def image_not_found(request: Request, exc: ImageNotFoundError) -> JSONResponse:
        return error_response(404, "image_not_found", str(exc))

    @app.exception_handler(OSError)
    async def not_saved(request: Request, exc: OSError) -> JSONResponse:
        # Writes go through services.fsutil: a failed one leaves the previous file as it was.
        log.error("%s %s: cannot write: %s", request.method, request.url.path, exc)
        return error_response(507, "not_saved", f"the server cannot write its files ({exc.strerror or type(exc).__name__})")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The raw errors may hold the offending input (bytes, huge strings): keep where and what only.
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body")
        field = first["loc"][-1] if first["loc"] else None
        message = f"{where}: {first['msg']}" if where else first["msg"]
        return error_response(422, "invalid_request", message, field=field, errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response
