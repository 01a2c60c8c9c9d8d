"""The AI worker process's side of the pipe (see worker.py): runs nodes one at a time on its main
thread with its own stores and model manager; a reader thread takes cancels, graph replies and
questions (model lists) while a node runs.  It exits when the app's end of the pipe closes."""
from __future__ import annotations

import importlib
import io
import logging
import os
import queue
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable

from PIL import Image

from nodes.base import REGISTRY, CanceledError, NodeInputError
from services.config import Settings
from services.executors.base import wait_for_warm_up, warm_up
from services.logfile import failure_line

log = logging.getLogger(__name__)

PREVIEW_MAX_PX = 256
PARENT_CHECK_S = 1.0


def encode_preview(image: Image.Image) -> bytes:
    """A small PNG of a preview: what crosses the pipe instead of the full image."""
    small = image.copy()
    small.thumbnail((PREVIEW_MAX_PX, PREVIEW_MAX_PX))
    if small.mode not in ("RGB", "RGBA", "L"):
        small = small.convert("RGB")
    buffer = io.BytesIO()
    small.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class _Pipe:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.conn.send(message)


class _Outbox:
    """The messages of running nodes, sent in order; previews are encoded on this thread, so the
    node's loop only hands an image over.  A message sent while nothing waits goes out at once."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe
        self.cond = threading.Condition()
        self.items: deque[tuple[dict[str, Any], Image.Image | None]] = deque()
        self.busy = False
        threading.Thread(target=self._run, name="outbox", daemon=True).start()

    def put(self, message: dict[str, Any], preview: Image.Image | None = None) -> None:
        with self.cond:
            if preview is None and not self.items and not self.busy:
                self.pipe.send(message)
                return
            self.items.append((message, preview))
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items:
                    self.cond.wait()
                message, preview = self.items.popleft()
                self.busy = True
            if preview is not None:
                message["preview"] = encode_preview(preview)
            self.pipe.send(message)
            with self.cond:
                self.busy = False


class _Job:
    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.cancel = threading.Event()
        self.graph_replies: queue.SimpleQueue[Any] = queue.SimpleQueue()


class WorkerState:
    def __init__(self, conn: Any, settings: Settings) -> None:
        from services.container import Services

        self.pipe = _Pipe(conn)
        self.outbox = _Outbox(self.pipe)
        self.services = Services.local(settings)
        self.warming = warm_up(self.services)
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.running: dict[int, _Job] = {}

    # --- the reader thread ------------------------------------------------------------------------

    def read(self) -> None:
        while True:
            try:
                message = self.pipe.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the app is gone: nothing is left to do
            op = message["op"]
            if op == "run":
                job = _Job(message)
                self.running[message["id"]] = job
                self.jobs.put(job)
            elif op == "cancel":
                job = self.running.get(message["id"])
                if job is not None:
                    job.cancel.set()
            elif op == "graph":
                job = self.running.get(message["id"])
                if job is not None:
                    job.graph_replies.put(message["graph"])
            elif op == "call":
                threading.Thread(target=self.answer, args=(message,), daemon=True).start()
            elif op == "stop":
                self.jobs.put(None)
                return

    def answer(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"op": "reply", "id": message["id"]}
        try:
            reply["value"] = getattr(self, "call_" + message["method"])(*message["args"])
        except Exception as exc:  # the asking side raises it again; only builtin types cross the pipe
            reply["error"] = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            reply["error_type"] = KeyError if isinstance(exc, KeyError) else ValueError if isinstance(exc, ValueError) else RuntimeError
        self.pipe.send(reply)

    def call_list_models(self, kind: str | None) -> Any:
        return self.services.models.list(kind)

    def call_unrecognized_models(self) -> Any:
        return self.services.models.unrecognized()

    def call_objects_exist(self, names: list[str]) -> bool:
        return all(self.services.objects.exists(name) for name in names)

    def call_settings(self, settings: Settings) -> None:
        from services.stores.images import DiskImageStore

        services = self.services
        if settings.outputs_dir != services.settings.outputs_dir:
            services.images = DiskImageStore(settings.outputs_dir)
        services.settings = settings
        services.executor.settings_changed()  # a new model manager reads the new folders

    # --- the main thread ---------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.run(job)
            finally:
                self.running.pop(job.message["id"], None)

    def run(self, job: _Job) -> None:
        request_id = job.message["id"]
        report = progress_reporter(self.outbox.put, request_id)
        wait_for_warm_up(self.warming, report)
        reply = run_request(self.services, job.message, self._graph_asker(job), report, job.cancel)
        self.outbox.put({**reply, "id": request_id})

    def _graph_asker(self, job: _Job) -> Callable[[], Any]:
        def graph() -> Any:
            self.outbox.put({"op": "graph", "id": job.message["id"]})
            return job.graph_replies.get()

        return graph


def run_request(services: Any, message: dict[str, Any], graph: Callable[[], Any], report: Callable[..., None],
                cancel: threading.Event) -> dict[str, Any]:
    """Run the node a "run" message describes with these services; the reply: {"op": "done",
    "outputs"} or {"op": "error", "kind": canceled | input | failed, ...} (shared by every worker)."""
    from services.executors.base import NodeCall

    try:
        cls = _node_class(message["type"], message["module"])
        invocation = cls.model_validate(message["values"])
        call = NodeCall(invocation, message["session_id"], message["node_id"],
                        tuple(tuple(pair) for pair in message["index"]), graph)
        outputs = services.executor.execute(call, report, cancel)
    except CanceledError:
        return {"op": "error", "kind": "canceled"}
    except NodeInputError as exc:
        return {"op": "error", "kind": "input", "field": exc.field, "message": str(exc)}
    except Exception as exc:  # the node failed: the app shows the message, its log keeps the traceback
        line = failure_line(message["node_id"], message["type"], exc, services.settings.data_dir)
        return {"op": "error", "kind": "failed", "message": line, "traceback": traceback.format_exc()}
    return {"op": "done", "outputs": outputs}


def progress_reporter(put: Callable[[dict[str, Any], Image.Image | None], None], request_id: Any) -> Callable[..., None]:
    """A node's progress as `put(message, preview)` calls (NodeContext already thinned the previews
    out); the sender encodes previews (encode_preview) off the node's loop."""
    def report(step: int, total: int, message: str, preview: Image.Image | None) -> None:
        put({"op": "progress", "id": request_id, "step": step, "total": total, "message": message, "preview": None},
            preview)

    return report


def _node_class(node_type: str, module: str) -> Any:
    """The node class, importing the module that declares it when the worker has not loaded it
    (nodes declared outside nodes/ and the plugin folder, e.g. in tests)."""
    cls = REGISTRY.get(node_type)
    if cls is None:
        importlib.import_module(module)
        cls = REGISTRY[node_type]
    return cls


def _watch_parent(parent_pid: int) -> None:
    """A second guard besides the pipe: exit when the app process is gone."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def serve(conn: Any, settings: Settings, parent_pid: int) -> None:
    """The worker process's entry point."""
    from nodes.discovery import load_all_nodes

    logging.basicConfig(level=logging.WARNING, format="ai-worker: %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    load_all_nodes(settings.plugins_dir)
    state = WorkerState(conn, settings)
    threading.Thread(target=state.read, name="pipe-reader", daemon=True).start()
    state.serve()
    # Asked to stop: nothing is left to send, and the interpreter's teardown (torch's threads and
    # modules) would keep the user waiting seconds on quit.
    logging.shutdown()
    os._exit(0)
