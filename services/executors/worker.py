"""The AI worker executor: nodes that declare `runs_in_worker` run in one long-lived child process
(started with `spawn` on first need), which holds the models and is the only process that imports
torch, torchvision, triton, diffusers or spandrel.  Other nodes run in this process.

Crash isolation: when the worker dies (a segfault in a GPU library, out of memory, `os._exit`) the
node it was running fails with a message that says so, and the next node that needs it starts a
fresh one.  A worker that sends nothing for `settings.worker_hang_s` while running a node is
stopped and reported.  The worker exits by itself when this process goes away (its pipe closes).

Messages are plain dicts over a multiprocessing pipe; every one carries the request id it belongs to.
"""
from __future__ import annotations

import atexit
import io
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from typing import Any

from PIL import Image

from nodes.base import CanceledError, NodeInputError
from services.config import Settings
from services.engine.context import ProgressReport
from services.models.manager import ModelInfo, UnrecognizedFile

from .base import Executor, NodeCall, NodeFailedError
from .local import InProcessExecutor

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often a waiting run looks at its cancel flag
CALL_TIMEOUT_S = 600.0  # a model scan of a large folder (it imports torch first)
STOP_TIMEOUT_S = 5.0


def _ended(process: multiprocessing.process.BaseProcess) -> str:
    """How a worker ended, in words: "signal 11, SIGSEGV" or "exit code 3"."""
    process.join(2.0)
    code = process.exitcode
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class WorkerGone(Exception):
    """The worker process ended while a request was waiting for it."""


class _Worker:
    """One child process and the pipe to it.  Requests wait on their own queues; a reader thread
    routes what the child sends by request id."""

    def __init__(self, settings: Settings) -> None:
        from .worker_process import serve

        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe()
        # Not a daemon: daemonic processes may not start children (torch.compile's workers do).
        self.process = context.Process(target=serve, args=(child_end, settings, os.getpid()),
                                       name="invoke-nodes-ai-worker", daemon=False)
        self.process.start()
        child_end.close()
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.gone = False
        threading.Thread(target=self._read, name="ai-worker-reader", daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                break
            waiting = self._pending.get(message.get("id"))
            if waiting is not None:
                waiting.put(message)
        self.gone = True
        for waiting in list(self._pending.values()):
            waiting.put({"op": "gone"})

    def open(self) -> tuple[int, queue.SimpleQueue[dict[str, Any]]]:
        request_id = next(self._ids)
        replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._pending[request_id] = replies
        if self.gone:
            replies.put({"op": "gone"})
        return request_id, replies

    def close_request(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def send(self, message: dict[str, Any]) -> None:
        try:
            with self._send_lock:
                self.conn.send(message)
        except (OSError, ValueError):  # the child is gone: the reader reports it to every request
            self.gone = True
            for waiting in list(self._pending.values()):
                waiting.put({"op": "gone"})

    def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        request_id, replies = self.open()
        try:
            self.send({"op": "call", "id": request_id, "method": method, "args": args})
            try:
                reply = replies.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the AI worker did not answer '{method}' within {timeout:.0f} s") from None
        finally:
            self.close_request(request_id)
        if reply["op"] == "gone":
            raise WorkerGone(f"the AI worker stopped ({self.ended()})")
        if reply.get("error"):
            raise reply["error_type"](reply["error"])
        return reply["value"]

    def ended(self) -> str:
        return _ended(self.process)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.process.is_alive():
            self.send({"op": "stop"})
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.gone = True
        self.conn.close()


class WorkerExecutor(Executor):
    def __init__(self, settings: Settings, local: InProcessExecutor) -> None:
        self.settings = settings
        self.local = local
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._shut = False  # after shutdown no worker starts: a late call (a model list asked at launch) would
        # start a child that nothing stops, and the app's exit would wait for it forever
        self._waiting: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}  # session id -> its running node's replies
        atexit.register(self.shutdown)  # before multiprocessing's own exit hook joins its children

    # --- the process ---------------------------------------------------------------------------

    def _ensure(self) -> _Worker:
        with self._lock:
            if self._shut:
                raise WorkerGone("the app is closing: no new AI worker starts")
            if self._worker is None or self._worker.gone:
                if self._worker is not None:
                    self._worker.stop(0.5)
                self._worker = _Worker(self.settings)
                log.info("started the AI worker (pid %s)", self._worker.pid)
            return self._worker

    @property
    def worker_pid(self) -> int | None:
        """The running worker's pid (None when there is none)."""
        worker = self._worker
        return worker.pid if worker is not None and not worker.gone else None

    def shutdown(self) -> None:
        with self._lock:
            self._shut = True
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()

    def settings_changed(self) -> None:
        self.local.settings_changed()
        worker = self._worker
        if worker is not None and not worker.gone:
            try:
                worker.call("settings", self.settings)
            except (WorkerGone, TimeoutError) as exc:
                log.warning("the AI worker did not take the new settings: %s", exc)

    # --- running nodes ---------------------------------------------------------------------------

    def execute(self, call: NodeCall, report: ProgressReport, cancel: threading.Event) -> list[dict[str, Any]]:
        cls = type(call.invocation)
        if not cls.runs_in_worker:
            return self.local.execute(call, report, cancel)
        worker = self._ensure()
        what = f"node '{call.node_id}' ({cls.node_type})"
        request_id, replies = worker.open()
        self._waiting[call.session_id] = replies
        try:
            worker.send({"op": "run", "id": request_id, "type": cls.node_type, "module": cls.__module__,
                         "values": call.invocation.model_dump(mode="json"), "session_id": call.session_id,
                         "node_id": call.node_id, "index": call.index})
            return self._wait(worker, request_id, replies, call, report, cancel, what)
        finally:
            self._waiting.pop(call.session_id, None)
            worker.close_request(request_id)

    def cancel(self, session_id: str) -> None:
        waiting = self._waiting.get(session_id)
        if waiting is not None:
            waiting.put({"op": "cancel"})  # wakes the waiting run, which tells the worker

    def _wait(self, worker: _Worker, request_id: int, replies: queue.SimpleQueue[dict[str, Any]], call: NodeCall,
              report: ProgressReport, cancel: threading.Event, what: str) -> list[dict[str, Any]]:
        hang_s = float(self.settings.worker_hang_s)
        heard = time.monotonic()
        cancel_sent = False
        while True:
            if cancel.is_set() and not cancel_sent:
                worker.send({"op": "cancel", "id": request_id})
                cancel_sent = True
            try:
                message = replies.get(timeout=POLL_S)
            except queue.Empty:
                if time.monotonic() - heard > hang_s:
                    worker.stop(0.5)
                    raise NodeFailedError(f"the AI worker gave no sign of progress for {hang_s:.0f} s while running "
                                          f"{what}, so it was stopped; the next run starts a new one") from None
                continue
            op = message["op"]
            if op == "cancel":
                continue  # the loop's top sends it on
            heard = time.monotonic()
            if op == "progress":
                report(message["step"], message["total"], message["message"], decode_preview(message.get("preview")))
            elif op == "graph":
                worker.send({"op": "graph", "id": request_id, "graph": call.graph()})
            elif op == "done":
                return message["outputs"]
            elif op == "error":
                raise_reply(message)
            elif op == "gone":
                raise NodeFailedError(f"the AI worker stopped ({worker.ended()}) while running {what}; "
                                      "the next run starts a new one")

    # --- questions for where the models are -----------------------------------------------------

    def _ask(self, method: str, *args: Any) -> Any:
        try:
            return self._ensure().call(method, *args)
        except WorkerGone:  # it died meanwhile (perhaps running a node): once more in a new one
            return self._ensure().call(method, *args)

    def list_models(self, kind: str | None = None) -> list[ModelInfo]:
        return self._ask("list_models", kind)

    def unrecognized_models(self) -> list[UnrecognizedFile]:
        return self._ask("unrecognized_models")

    def objects_exist(self, names: list[str]) -> bool:
        worker = self._worker
        if worker is None or worker.gone:
            return False  # objects lived in a worker that is gone
        try:
            return bool(worker.call("objects_exist", names))
        except (WorkerGone, TimeoutError):
            return False


def decode_preview(preview: bytes | None) -> Image.Image | None:
    if preview is None:
        return None
    image = Image.open(io.BytesIO(preview))
    image.load()
    return image


def raise_reply(message: dict[str, Any]) -> None:
    kind = message["kind"]
    if kind == "canceled":
        raise CanceledError()
    if kind == "input":
        raise NodeInputError(message["field"], message["message"])
    if message.get("traceback"):
        log.warning("a node failed in a worker:\n%s", message["traceback"])
    raise NodeFailedError(message["message"])
