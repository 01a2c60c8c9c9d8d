"""All services in one object, built with the local implementations by `Services.local()`."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from nodes.base import PIN_TYPES
from services.engine.cache import MemoryOutputCache, OutputCache
from services.executors.base import Executor
from services.config import Settings
from services.engine.events import EventBus, LocalEventBus
from services.stores.images import DiskImageStore, ImageStore
from services.stores.objects import MemoryObjectStore, ObjectStore
from services.engine.queue import InvocationQueue, MemoryInvocationQueue
from services.stores.sessions import DiskSessionStore, SessionStore


IN_PROCESS, WORKER, RAY = "in-process", "worker", "ray"
EXECUTOR_KINDS = (IN_PROCESS, WORKER, RAY)


def _local_model_manager(settings: Settings) -> Any:
    from services.models.manager import LocalModelManager  # torch-free module; torch loads when a model does

    return LocalModelManager(settings)


@dataclass
class Services:
    settings: Settings
    sessions: SessionStore
    images: ImageStore
    objects: ObjectStore
    queue: InvocationQueue
    events: EventBus
    cache: OutputCache
    model_manager_factory: Callable[[Settings], Any] = _local_model_manager
    executor_kind: str = IN_PROCESS
    _models: Any = field(default=None, repr=False)
    _models_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _executor: Executor | None = field(default=None, repr=False)

    @classmethod
    def local(cls, settings: Settings | None = None, executor: str = IN_PROCESS) -> "Services":
        """executor: "in-process" runs every node here; "worker" runs the nodes that declare
        `runs_in_worker` in one AI worker process, so this process never imports torch; "ray" runs
        them on the Ray workers of `settings.cluster` (the `cluster` extra)."""
        if executor not in EXECUTOR_KINDS:
            raise ValueError(f"unknown executor '{executor}' (use one of: {', '.join(EXECUTOR_KINDS)})")
        settings = settings or Settings.load()
        settings.ensure_dirs()
        return cls(settings=settings, sessions=DiskSessionStore(settings.sessions_dir),
                   images=DiskImageStore(settings.outputs_dir), objects=MemoryObjectStore(),
                   queue=MemoryInvocationQueue(), events=LocalEventBus(), cache=MemoryOutputCache(),
                   executor_kind=executor)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            with self._models_lock:
                if self._executor is None:
                    from services.executors.local import InProcessExecutor

                    local = InProcessExecutor(self)
                    if self.executor_kind == WORKER:
                        from services.executors.worker import WorkerExecutor

                        self._executor = WorkerExecutor(self.settings, local)
                    elif self.executor_kind == RAY:
                        from services.executors.cluster import ClusterExecutor

                        self._executor = ClusterExecutor(self.settings, local)
                    else:
                        self._executor = local
        return self._executor

    def reset_models(self) -> None:
        """Forget the model manager (settings changed); the next use scans again."""
        with self._models_lock:
            self._models = None

    @property
    def models(self) -> Any:
        """The model manager, created on first use (it is the only service that needs torch)."""
        if self._models is None:
            with self._models_lock:
                if self._models is None:
                    self._models = self.model_manager_factory(self.settings)
        return self._models

    def outputs_alive(self, output_tags: dict[str, str], outputs: dict[str, Any]) -> bool:
        """Do the images/objects a (cached) output refers to still exist?"""
        for name, tag in output_tags.items():
            value = outputs.get(name)
            if not isinstance(value, dict):
                continue
            pin = PIN_TYPES[tag]
            name = value.get(pin.key, "")
            if pin.store == "images" and not self.images.exists(name):
                return False
            if pin.store == "objects" and not self.executor.objects_exist([name]):
                return False
        return True
