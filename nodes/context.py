"""What a running node sees: a narrow, typed context (implemented in services/engine/context.py).

The same context works whether the node runs in the app's process or in the AI worker process:
images travel as image-store names, models are used through the manager of the process the node
runs in, progress previews are sent back as small encoded frames.  Nothing here imports torch.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Protocol

from PIL import Image

from .base import ImageField


class ImagesContext(Protocol):
    def get(self, ref: ImageField | str) -> Image.Image: ...

    def save(self, image: Image.Image) -> ImageField:
        """Store an image; the PNG carries the session's graph and the node id."""

    def export(self, ref: ImageField | str, destination: str | Path) -> None:
        """Write a copy of a stored PNG to a user's file, atomically."""


class ObjectsContext(Protocol):
    """Values between nodes that are not images (latents, conditioning), kept where nodes run."""

    def put(self, obj: Any, prefix: str = "obj") -> str: ...

    def get(self, name: str) -> Any: ...


class ModelInfoLike(Protocol):
    id: str
    name: str
    kind: str
    base: str | None
    variant: str


class ModelsContext(Protocol):
    def get(self, model_id: str, kind: str | None = None) -> ModelInfoLike:
        """Raises KeyError naming the known ids for an unknown id or one of another kind."""

    def use(self, *model_ids: str) -> AbstractContextManager[list[Any]]:
        """The loaded models, kept loaded (not evicted) while the block runs."""

    def list(self, kind: str | None = None) -> list[ModelInfoLike]:
        """The models found of one kind (all kinds when None)."""

    def face_detector(self, name: str) -> Any:
        """A loaded face detector; KeyError says where its weights go when they are missing."""

    def preprocessor(self, architecture: str) -> ModelInfoLike:
        """The weights of a preprocessor ("hed", "lineart"...); KeyError says which file goes where."""

    @property
    def compile_mode(self) -> str: ...  # torch.compile mode for denoisers ("off" on a CPU)

    @property
    def cache_dir(self) -> Path: ...  # where compiled kernels and converted weights may be kept


class InvocationContext(Protocol):
    session_id: str
    node_id: str

    @property
    def images(self) -> ImagesContext: ...

    @property
    def objects(self) -> ObjectsContext: ...

    @property
    def models(self) -> ModelsContext: ...

    @property
    def outputs_dir(self) -> Path: ...  # the user's outputs folder (where nodes may write files)

    @property
    def allowed_write_dirs(self) -> list[Path]: ...  # other folders the user allows (nodes/core/writes.py)

    def progress(self, step: int, total: int, message: str = "",
                 preview: Image.Image | Callable[[], Image.Image] | None = None) -> None:
        """Report progress (and a preview, or a function making it: called only when it is shown);
        raises CanceledError once the run is canceled."""

    def is_canceled(self) -> bool: ...

    def raise_if_canceled(self) -> None: ...
