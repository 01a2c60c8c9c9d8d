"""The executor interface: the invoker keeps sessions, ordering, fan-out, the cache and events,
and hands each node's `invoke()` to an executor.  Everything that crosses it is plain data (node
type and JSON values in; JSON outputs, progress and errors out), so an implementation may run the
node in this process, in a child process, or on another machine (a Ray actor).
"""
from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from nodes.base import BaseInvocation
from services.engine.context import Index, NodeContext, ProgressReport
from services.models.manager import ModelInfo, UnrecognizedFile


log = logging.getLogger(__name__)


class NodeFailedError(Exception):
    """A node could not finish for a reason outside it (its worker stopped or hung); the message is
    written for the user and names the node."""


@dataclass(frozen=True)
class NodeCall:
    """One node invocation: the validated node plus where its results belong."""

    invocation: BaseInvocation
    session_id: str
    node_id: str
    index: Index
    graph: Callable[[], dict[str, Any] | None]  # the session's graph, for saved images to embed


class Executor(ABC):
    # How many nodes it runs at once: the invoker runs this many sessions side by side.
    parallelism: int = 1

    @abstractmethod
    def execute(self, call: NodeCall, report: ProgressReport, cancel: threading.Event) -> list[dict[str, Any]]:
        """Run one node and return its outputs as JSON data, one dict per item (one for a node that
        does not fan out).  Raises CanceledError, NodeInputError, NodeFailedError, or what the node raised."""

    @abstractmethod
    def list_models(self, kind: str | None = None) -> list[ModelInfo]: ...

    @abstractmethod
    def unrecognized_models(self) -> list[UnrecognizedFile]: ...

    @abstractmethod
    def objects_exist(self, names: list[str]) -> bool:
        """Are these object-store values (latents, conditioning) still held where nodes run?"""

    def cancel(self, session_id: str) -> None:
        """The session's cancel flag was just set: an executor that checks it only now and then
        passes it on at once."""

    def workers(self) -> list[dict[str, Any]]:
        """Where nodes run, for status displays: one dict per worker (id, node, device, models it
        holds, what it runs now).  Empty for executors that run here."""
        return []

    def settings_changed(self) -> None:
        """The user changed settings (models folder, device, ...): pick them up before the next node."""

    def shutdown(self) -> None:
        """Release what the executor holds (a worker process, loaded models)."""


def invoke_node(invocation: BaseInvocation, context: NodeContext) -> list[dict[str, Any]]:
    """Call `invoke` and check and dump what it returned (shared by every executor)."""
    cls = type(invocation)
    result = invocation.invoke(context)
    produced = result if cls.fans_out else [result]
    if not isinstance(produced, list) or any(type(r) is not cls.output_class for r in produced):
        raise TypeError(f"invoke returned {type(result).__name__}, expected {cls.output_class.__name__}")
    return [r.model_dump(mode="json") for r in produced]


def warm_up(services: Any) -> threading.Thread:
    """Import the generation libraries on a background thread of the AI process, so that the first
    run after launch pays only for its model.  Returns the thread that nodes wait for (importing
    diffusers from two threads at once breaks it); torch's compiler is imported after it, on a thread
    of its own that only the background compile waits for."""
    def generation() -> None:
        try:
            from services.models.loading import import_for_generation

            import_for_generation(services.models.compile_mode)
        except Exception:  # the run that needs them reports what is wrong
            log.debug("warm-up imports failed", exc_info=True)
            return
        threading.Thread(target=compiler, name="warm-up-compiler", daemon=True).start()

    def compiler() -> None:
        try:
            from services.models.loading import import_for_compiling

            import_for_compiling(services.models.compile_mode)
        except Exception:  # the background compile that needs it reports what is wrong
            log.debug("warm-up imports of the compiler failed", exc_info=True)

    thread = threading.Thread(target=generation, name="warm-up", daemon=True)
    thread.start()
    return thread


WARMING_UP = "importing the AI libraries"  # a node's progress message while it waits for the warm-up


def wait_for_warm_up(warming: threading.Thread, report: ProgressReport) -> None:
    """Hold a node that arrives while the warm-up still imports: importing diffusers from two threads at
    once breaks it.  The node says so meanwhile (a sign of life for the worker's hang watch too)."""
    while warming.is_alive():
        report(0, 0, WARMING_UP, None)
        warming.join(1.0)

