"""The HTTP API: FastAPI routes generated from the invocation schema, live events over a WebSocket."""
from .app import create_app

__all__ = ["create_app"]
