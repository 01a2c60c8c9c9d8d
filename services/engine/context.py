"""The context handed to a running node: images, objects, models, progress, cancel."""
from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from nodes.base import CanceledError, ImageField

from services.container import Services
from services.engine.events import NODE_PROGRESS, Event
from services.engine.session import Session


class NodeImages:
    """Image access for one node: saved images embed the session graph and the node id."""

    def __init__(self, services: Services, session: Session, node_id: str) -> None:
        self._store = services.images
        self._session = session
        self._node_id = node_id

    def save(self, image: Image.Image) -> ImageField:
        return self._store.save(image, session_id=self._session.id, node_id=self._node_id,
                                graph=self._session.graph.to_dict())

    def get(self, ref: ImageField | str) -> Image.Image:
        return self._store.get(ref)

    def path(self, ref: ImageField | str) -> Any:
        return self._store.path(ref)

    def export(self, ref: ImageField | str, destination: Any) -> None:
        self._store.export(ref, destination)


class NodeContext:
    def __init__(self, services: Services, session: Session, node_id: str, cancel: threading.Event,
                 index: tuple[tuple[str, int], ...] = ()) -> None:
        self.services = services
        self.session_id = session.id
        self.node_id = node_id
        self.index = index
        self._session = session
        self._cancel = cancel

    @property
    def images(self) -> NodeImages:
        return NodeImages(self.services, self._session, self.node_id)

    @property
    def objects(self) -> Any:
        return self.services.objects

    @property
    def models(self) -> Any:
        return self.services.models

    @property
    def settings(self) -> Any:
        return self.services.settings

    def is_canceled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_canceled(self) -> None:
        if self._cancel.is_set():
            raise CanceledError()

    def progress(self, step: int, total: int, message: str = "", preview: Image.Image | None = None) -> None:
        """Report progress (and a preview image); raises CanceledError once the session is canceled,
        so a node that reports every step stops within one step."""
        if self.services.events.wants(self.session_id):
            data: dict[str, Any] = {"step": step, "total": total, "message": message, "index": self.index}
            if preview is not None:
                data["preview"] = preview
            self.services.events.emit(Event(NODE_PROGRESS, self.session_id, self.node_id, data))
        self.raise_if_canceled()
