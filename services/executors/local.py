"""The in-process executor: nodes run on the calling thread with this process's stores and models."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from services.engine.context import NodeContext, ProgressReport
from services.models.manager import ModelInfo, UnrecognizedFile

from .base import Executor, NodeCall, invoke_node

if TYPE_CHECKING:
    from services.container import Services


class InProcessExecutor(Executor):
    def __init__(self, services: "Services") -> None:
        self.services = services

    def context(self, call: NodeCall, report: ProgressReport, cancel: threading.Event) -> NodeContext:
        services = self.services
        return NodeContext(session_id=call.session_id, node_id=call.node_id, index=call.index, images=services.images,
                           objects=services.objects, models=lambda: services.models,
                           outputs_dir=services.settings.outputs_dir, graph=call.graph, report=report, cancel=cancel,
                           allowed_write_dirs=services.settings.write_dirs())

    def execute(self, call: NodeCall, report: ProgressReport, cancel: threading.Event) -> list[dict[str, Any]]:
        return invoke_node(call.invocation, self.context(call, report, cancel))

    def list_models(self, kind: str | None = None) -> list[ModelInfo]:
        return self.services.models.list(kind)

    def unrecognized_models(self) -> list[UnrecognizedFile]:
        return self.services.models.unrecognized()

    def objects_exist(self, names: list[str]) -> bool:
        return all(self.services.objects.exists(name) for name in names)

    def settings_changed(self) -> None:
        self.services.reset_models()
