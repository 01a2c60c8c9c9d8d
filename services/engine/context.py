"""The context handed to a running node (nodes/context.py declares what nodes may use of it).

Built by an executor from the stores of the process the node runs in; `report` carries progress
to wherever the app listens (the event bus in-process, the pipe to the app from the AI worker).
"""
from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from nodes.base import CanceledError, ImageField
from services.models.manager import ModelInfo, ModelManager
from services.stores.images import ImageStore
from services.stores.objects import ObjectStore

Index = tuple[tuple[str, int], ...]
# report(step, total, message, preview): where a node's progress goes
ProgressReport = Callable[[int, int, str, Image.Image | None], None]
# a preview image, or a function that makes it (called only when the preview is shown)
Preview = Image.Image | Callable[[], Image.Image] | None
PREVIEW_INTERVAL_S = 0.05  # at most ~20 previews a second per node (and the last step's always)


class NodeImages:
    """Image access for one node: saved images embed the session graph and the node id."""

    def __init__(self, store: ImageStore, session_id: str, node_id: str, graph: Callable[[], dict[str, Any] | None]) -> None:
        self._store = store
        self._session_id = session_id
        self._node_id = node_id
        self._graph = graph

    def save(self, image: Image.Image) -> ImageField:
        return self._store.save(image, session_id=self._session_id, node_id=self._node_id, graph=self._graph())

    def get(self, ref: ImageField | str) -> Image.Image:
        return self._store.get(ref)

    def export(self, ref: ImageField | str, destination: str | Path) -> None:
        self._store.export(ref, destination)


class NodeModels:
    """The model manager, narrowed to what nodes use."""

    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def get(self, model_id: str, kind: str | None = None) -> ModelInfo:
        return self._manager.get(model_id, kind)

    def use(self, *model_ids: str) -> AbstractContextManager[list[Any]]:
        return self._manager.use(*model_ids)

    def list(self, kind: str | None = None) -> list[ModelInfo]:
        return self._manager.list(kind)

    def face_detector(self, name: str) -> Any:
        return self._manager.face_detector(name)

    def preprocessor(self, architecture: str) -> ModelInfo:
        return self._manager.preprocessor(architecture)

    @property
    def compile_mode(self) -> str:
        return self._manager.compile_mode

    @property
    def cache_dir(self) -> Path:
        return self._manager.cache_dir


class NodeContext:
    def __init__(self, *, session_id: str, node_id: str, index: Index, images: ImageStore, objects: ObjectStore,
                 models: Callable[[], ModelManager], outputs_dir: Path, graph: Callable[[], dict[str, Any] | None],
                 report: ProgressReport, cancel: threading.Event, allowed_write_dirs: Sequence[Path] = ()) -> None:
        self.session_id = session_id
        self.node_id = node_id
        self.index = index
        self._images = images
        self._objects = objects
        self._models = models  # created on first use: only nodes that use models pay for the manager
        self._outputs_dir = outputs_dir
        self._allowed_write_dirs = [Path(p) for p in allowed_write_dirs]
        self._graph = graph
        self._report = report
        self._cancel = cancel
        self._last_preview = 0.0

    @property
    def images(self) -> NodeImages:
        return NodeImages(self._images, self.session_id, self.node_id, self._graph)

    @property
    def objects(self) -> ObjectStore:
        return self._objects

    @property
    def models(self) -> NodeModels:
        return NodeModels(self._models())

    @property
    def outputs_dir(self) -> Path:
        return Path(self._outputs_dir)

    @property
    def allowed_write_dirs(self) -> list[Path]:
        return list(self._allowed_write_dirs)

    def is_canceled(self) -> bool:
        return self._cancel.is_set()

    def raise_if_canceled(self) -> None:
        if self._cancel.is_set():
            raise CanceledError()

    def progress(self, step: int, total: int, message: str = "", preview: Preview = None) -> None:
        """Report progress (and a preview image); raises CanceledError once the session is canceled,
        so a node that reports every step stops within one step.  Previews are thinned out here, so
        a GPU loop is not made to wait for a copy of every step's preview."""
        now = time.monotonic()
        if preview is not None and (now - self._last_preview >= PREVIEW_INTERVAL_S or step >= total):
            self._last_preview = now
            image = preview() if callable(preview) else preview
        else:
            image = None
        self._report(step, total, message, image)
        self.raise_if_canceled()
