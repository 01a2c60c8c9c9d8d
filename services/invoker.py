"""The invoker: the one entry point apps use.  It creates, stores, forks and runs sessions on
background runner threads (one per node the executor runs at once: one, or one per cluster worker),
with cancel and events (see services.engine.events), and answers what else apps need: images,
models, settings, watching a session's events."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from nodes.discovery import load_all_nodes

from services.config import Settings
from services.container import Services
from services.engine.events import SESSION_CANCELED, Callback, Event
from services.engine.execution import SessionRun, mark_stale
from services.engine.graph import Graph
from services.lru import LRU
from services.engine.queue import Job
from services.engine.session import DONE_STATES, Session
from services.models.manager import ModelInfo, UnrecognizedFile
from services.stores.images import ImageStore
from services.stores.sessions import SessionNotFoundError, read_session_file

if TYPE_CHECKING:
    from services.importers import ImportReport
    from services.models.hashes import HashCache

log = logging.getLogger(__name__)


class Invoker:
    def __init__(self, services: Services, *, start: bool = True) -> None:
        self.services = services
        self.plugin_errors = load_all_nodes(services.settings.plugins_dir)
        # Sessions with queued or running jobs must stay the very objects the worker writes into;
        # the rest are only the recently used ones (the session store keeps everything on disk).
        self._running: dict[str, Session] = {}
        self._recent: LRU[str, Session] = LRU(256)
        self._cancel: dict[str, threading.Event] = {}
        self._pending: dict[str, int] = {}
        self._finished: dict[str, bool] = {}  # session id -> its last run ended without a cancel
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._hashes: HashCache | None = None  # model file hashes, made on the first import
        if start:
            self.start()

    # --- sessions ----------------------------------------------------------------------------

    def create_session(self, graph: Graph | Mapping[str, Any] | None = None) -> Session:
        if graph is not None and not isinstance(graph, Graph):
            graph = Graph.from_dict(graph, strict=True)
        return self.add_session(Session(graph))

    def add_session(self, session: Session) -> Session:
        """Keep (and store) a session made here: a fork, a clone, an edited copy (files: open_session)."""
        self._keep(session)
        self.services.sessions.save(session)
        return session

    def open_session(self, path: str | Path) -> Session:
        """Open a saved session (.json) or the graph in a PNG the app made, keep and store it.
        Raises SessionFileError.  Results whose images are gone here are stale (see mark_stale)."""
        session = read_session_file(path)
        self._keep(session, reopened=True)
        self.services.sessions.save(session)
        return session

    def import_graph(self, data: bytes, filename: str, fmt: str | None = None) -> tuple[Session, "ImportReport"]:
        """A ComfyUI / AUTOMATIC1111 / InvokeAI workflow or PNG as a new session (kept and stored),
        with the report of what was mapped and which models were found.  `filename` names the file in
        messages; given as an absolute path, images the workflow names are looked for beside it.
        Raises ImportFormatError (the message names the file and the reason)."""
        from services.importers import ModelCatalog, import_data
        from services.models.hashes import HashCache

        if self._hashes is None:
            self._hashes = HashCache(Path(self.services.settings.data_dir) / "cache" / "model_hashes.json")
        path = Path(filename)
        catalog = ModelCatalog(self.list_models(), self._hashes.get)
        result = import_data(data, filename, catalog, folder=path.parent if path.is_absolute() else None, fmt=fmt)
        session = Session(result.graph, change=f"imported {path.name} ({result.report.format})", ui=result.ui)
        self.add_session(session)
        return session, result.report

    def get_session(self, session_id: str) -> Session:
        session = self._running.get(session_id) or self._recent.get(session_id)
        if session is None:
            session = self.services.sessions.get(session_id)
            self._keep(session, reopened=True)
        return session

    def mark_stale(self, session: Session) -> list[str]:
        """Mark the nodes whose results name images/objects that are gone, and the nodes after
        them, stale; returns them.  Every run does this first; apps call it to show it before."""
        return mark_stale(self.services, session)

    def _keep(self, session: Session, *, reopened: bool = False) -> None:
        self._recent.put(session.id, session)
        # warm first: the live items of a stale fan-out node still serve its re-run from the cache
        self._warm_cache(session)
        if reopened:
            mark_stale(self.services, session, reopened=True)

    def save(self, session: Session) -> None:
        self.services.sessions.save(session)

    def delete_session(self, session_id: str) -> None:
        """Forget a session and delete its file (cancel and wait for a running one first)."""
        live = self._recent.get(session_id) or self._running.get(session_id)
        self._recent.pop(session_id)
        with self._cond:
            self._cancel.pop(session_id, None)
        try:
            self.services.sessions.delete(session_id)
        except SessionNotFoundError:
            if live is None:
                raise

    def _warm_cache(self, session: Session) -> None:
        """Results saved with a session seed the output cache, so reopening it costs nothing.
        Rows sharing a cache key are one execution (a fan-out node's items)."""
        for rows in session.results.values():
            by_key: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                if row.state in DONE_STATES and row.cache_key and row.outputs is not None:
                    by_key.setdefault(row.cache_key, []).append(row.outputs)
            for key, outputs in by_key.items():
                self.services.cache.put(key, outputs)

    def list_sessions(self, offset: int = 0, limit: int = 50) -> list[str]:
        """Stored session ids, newest first."""
        return self.services.sessions.list(offset, limit)

    def read_session(self, session_id: str) -> Session:
        """A stored session as it is on disk, without keeping it among the recently used ones."""
        return self.services.sessions.get(session_id)

    # --- what else apps need ------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def save_settings(self) -> None:
        """Write the settings (OSError when they cannot be) and apply them to the next nodes."""
        self.services.settings.save()
        self.services.executor.settings_changed()

    @property
    def images(self) -> ImageStore:
        return self.services.images

    def list_models(self, kind: str | None = None) -> list[ModelInfo]:
        """The models found in the models folders, asked where the models are loaded (the AI
        worker, when there is one: this process never imports torch for it)."""
        return self.services.executor.list_models(kind)

    def unrecognized_models(self) -> list[UnrecognizedFile]:
        return self.services.executor.unrecognized_models()

    def cluster(self) -> dict[str, Any]:
        """Where nodes run: the executor kind and its workers (device, models held, what each runs
        now; none without a cluster)."""
        return {"executor": self.services.executor_kind, "workers": self.services.executor.workers()}

    @contextlib.contextmanager
    def watch(self, listener: Callback, session_id: str | None = None) -> Iterator[None]:
        """Call `listener` with the events of one session (None: of every session) while the block runs.
        Events arrive on the thread that runs the nodes."""
        token = self.services.events.subscribe(listener, session_id)
        try:
            yield
        finally:
            self.services.events.unsubscribe(token)

    def subscribe(self, listener: Callback, session_id: str | None = None) -> object:
        """Like watch(), for listeners that outlive a block (a window, a socket): returns the token."""
        return self.services.events.subscribe(listener, session_id)

    def unsubscribe(self, token: object) -> None:
        self.services.events.unsubscribe(token)

    def run_and_wait(self, session: Session, listener: Callback | None = None, run_all: bool = True) -> bool:
        """Run a session and wait for it to end, `listener` receiving its events; False when it was
        canceled.  Ctrl-C cancels the run, waits for the node to stop, then raises KeyboardInterrupt."""
        with self.watch(listener, session.id) if listener is not None else contextlib.nullcontext():
            self.invoke(session, run_all)
            try:
                while not self.wait(session.id, 0.2):
                    pass
            except KeyboardInterrupt:
                self.cancel(session.id)
                self.wait(session.id, 30)
                raise
        return self._finished.pop(session.id, True)

    # --- running -----------------------------------------------------------------------------

    def invoke(self, session: Session | str, run_all: bool = True, only: frozenset[str] | set[str] | None = None) -> Session:
        """Queue a run of every ready node (run_all) or of the next one; returns at once.
        `only`: run just these nodes (e.g. one node and its ancestors)."""
        session = self.get_session(session) if isinstance(session, str) else session
        with self._cond:
            self._running[session.id] = session
            event = self._cancel.get(session.id)
            if event is None or event.is_set():
                self._cancel[session.id] = threading.Event()
            self._pending[session.id] = self._pending.get(session.id, 0) + 1
        self.services.queue.put(Job(session.id, run_all, frozenset(only) if only is not None else None))
        return session

    def run(self, session: Session, run_all: bool = True) -> bool:
        """Run on the calling thread (headless tools and benchmarks); False when canceled."""
        with self._cond:
            cancel = self._cancel.setdefault(session.id, threading.Event())
            if cancel.is_set():
                cancel = self._cancel[session.id] = threading.Event()
        try:
            return SessionRun(self.services, session, cancel).run(run_all)
        finally:
            self.services.sessions.save(session)

    def cancel(self, session_id: str) -> None:
        """Ask a session to stop.  Returns at once; the running node stops at its next check."""
        with self._cond:
            event = self._cancel.setdefault(session_id, threading.Event())
            event.set()
            dropped = self.services.queue.remove(session_id)
            if dropped:
                self._pending[session_id] -= dropped
                running = self._pending[session_id] > 0
                if not running:
                    self._running.pop(session_id, None)
                    self._cond.notify_all()
            else:
                running = True
        if running:
            self.services.executor.cancel(session_id)
        if dropped and not running:
            self.services.events.emit(Event(SESSION_CANCELED, session_id))

    # --- the queue as users see it -----------------------------------------------------------

    def queued(self) -> list[str]:
        """Session ids waiting to run, next first (the running one is not among them)."""
        return [job.session_id for job in self.services.queue.jobs()]

    def move_queued(self, session_id: str, delta: int) -> bool:
        """Move a waiting session `delta` places (negative: sooner)."""
        return self.services.queue.move(session_id, delta)

    @property
    def paused(self) -> bool:
        return self.services.queue.paused

    def pause(self, paused: bool = True) -> None:
        """Paused, the worker starts no new job (the running one finishes)."""
        self.services.queue.pause(paused)

    def is_busy(self, session_id: str) -> bool:
        with self._cond:
            return self._pending.get(session_id, 0) > 0

    def wait(self, session_id: str, timeout: float | None = None) -> bool:
        """Block until the session has no queued or running job; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending.get(session_id, 0) == 0, timeout)

    # --- the worker --------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        for number in range(len(self._threads), self.services.executor.parallelism):
            thread = threading.Thread(target=self._work, name=f"invoker-{number}" if number else "invoker", daemon=True)
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel what runs, stop the runner threads and the executor (worker processes end)."""
        for session_id in list(self._pending):
            self.cancel(session_id)
        self.services.queue.close()
        for thread in self._threads:
            thread.join(timeout)
        self.services.executor.shutdown()

    def _work(self) -> None:
        queue = self.services.queue
        while True:
            job = queue.get(timeout=0.5)
            if job is None:
                if queue.closed:
                    return
                continue
            try:
                session = self.get_session(job.session_id)
                with self._cond:
                    cancel = self._cancel.setdefault(job.session_id, threading.Event())
                self._finished[job.session_id] = SessionRun(self.services, session, cancel).run(job.run_all, job.only)
                self.services.sessions.save(session)
            except SessionNotFoundError:
                log.error("queued session %s no longer exists", job.session_id)
            except Exception:  # the runner must survive anything a job does
                log.exception("invoker job on session %s failed", job.session_id)
            finally:
                queue.done(job)
                with self._cond:
                    left = self._pending.get(job.session_id, 1) - 1
                    if left > 0:
                        self._pending[job.session_id] = left
                    else:
                        self._pending.pop(job.session_id, None)
                        finished = self._running.pop(job.session_id, None)
                        if finished is not None:
                            self._recent.put(job.session_id, finished)
                    self._cond.notify_all()
