"""The FastAPI app: routes, the event socket, the static test page and the OpenAPI schema."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from app.main import app_version
from nodes.base import REGISTRY

from . import catalog, events, images, sessions, socket_io, websocket
from .errors import ERROR_RESPONSES, install_error_handlers, json_body_is_storable
from .events import EventHub
from .guard import Guard
from .persist import DurableAppends
from .schemas import Health, invocation_components, link_node_schemas

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024

DESCRIPTION = """The invoke-nodes engine over HTTP: build sessions from nodes, run them, fetch the images.

Every node type is in the schemas below (`AnyInvocation`, discriminated on `type`); a node added
to the engine or a plugin appears here by itself.  Errors are JSON: `{"error", "message", "node_id",
"field", ...}`.

## Live events
""" + "\n\n".join(module.__doc__ or "" for module in (events, websocket, socket_io))


def _serve_docs_locally(app: FastAPI) -> None:
    """/docs and /redoc with their scripts served here: FastAPI's defaults load them from a CDN, so
    the pages are blank offline (and a loopback server would depend on a third party)."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    assets = Path(fastapi_offline.__file__).with_name("static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> Any:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Any:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)


def create_app(invoker: Any, *, token: str | None = None, allowed_hosts: frozenset[str] | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The API over an existing invoker (nodes and plugins already loaded).

    token: required on every request and socket when set.  allowed_hosts: Host header names that
    are answered (None: any).
    """
    version = app_version()
    # without a token anyone who reaches the port runs nodes: they may write to the outputs folder only
    invoker.services.settings.writes_outputs_only = token is None
    writer = DurableAppends(invoker)
    hub = EventHub(invoker, writer.get)
    socket_io_events = socket_io.SocketIOEvents(hub)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await socket_io_events.close()
        hub.close()
        writer.close()

    app = FastAPI(title="invoke-nodes", version=version, description=DESCRIPTION, lifespan=lifespan,
                  responses=ERROR_RESPONSES, docs_url=None, redoc_url=None)  # type: ignore[arg-type]
    app.state.invoker = invoker
    app.state.events = hub
    app.state.writer = writer
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts,
                       max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD)
    install_error_handlers(app)
    for router in (sessions.router, images.router, catalog.router):
        app.include_router(router, dependencies=[Depends(json_body_is_storable)])

    @app.get("/api/v1/health", response_model=Health, tags=["server"], summary="Is the server up")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": version, "nodes": len(REGISTRY)}

    @app.websocket("/api/v1/events")
    async def event_socket(socket: WebSocket) -> None:
        await websocket.serve(hub, socket)

    app.mount(socket_io.MOUNT, socket_io_events.app)  # behind the Guard like every route

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/static/test.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _serve_docs_locally(app)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: the client gets JSON without internals (paths); the log gets the traceback.
        logging.getLogger(__name__).exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "message": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = link_node_schemas(get_openapi(title=app.title, version=app.version,
                                                   description=app.description, routes=app.routes))
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, node_schema in invocation_components().items():
                if name in components:
                    raise RuntimeError(f"node schema {name!r} collides with an API model of the same name")
                components[name] = node_schema
            if token is not None:
                schema["components"]["securitySchemes"] = {"token": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"token": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
