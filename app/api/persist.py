"""Durable appends: a node appended over the API is answered only once it is on disk.

Saving the whole session on every append costs its full size and two fsyncs (14 ms at 400
nodes).  Instead each append is one record in a journal (services.stores.journal), and the
appends that arrive together share one fdatasync.  Every `interval` seconds, and at shutdown, a
checkpoint writes the changed sessions to their files and drops the journal segments they
cover; on start what is left of the journal is replayed onto the session files, so a killed
server loses nothing it acknowledged.  Runs, forks and new sessions are saved whole, at once.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Iterable

from services.engine.graph import GraphError, GraphNode
from services.engine.session import Session
from services.stores.journal import Journal
from services.stores.sessions import SessionNotFoundError

from .errors import ApiError

log = logging.getLogger(__name__)


class _Turn:
    """Appends to one session take turns (on the event loop, where session.lock cannot order them)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # appends holding or waiting for the lock: the entry goes with the last


class DurableAppends:
    # Checkpoints are seconds apart: their fsyncs (two per session file) compete with the journal's
    # for the disk, and the journal already keeps every append safe.
    def __init__(self, invoker: Any, interval: float = 5.0) -> None:
        self.invoker = invoker
        self.interval = interval
        self.journal = Journal(Path(invoker.settings.sessions_dir) / "journal")
        self.replay()
        self._turns: dict[str, _Turn] = {}  # per session with appends under way
        self._dirty: dict[str, Session] = {}  # changed since the last checkpoint (journaled only)
        self._saving: dict[str, Session] = {}  # taken out of _dirty, being written now
        self._lock = threading.Lock()  # guards _dirty and _saving
        self._io = threading.Lock()  # held by a checkpoint, so a deleted session is not written back
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-checkpoint", daemon=True)
        self._thread.start()

    async def append(self, session: Session, node: Any, links: Iterable[Any]) -> GraphNode:
        """Validate and append a node; returns once it is on disk.  A bad node raises GraphError,
        a failed write ApiError 507; either way the session is left as it was.

        Runs on the event loop (no thread-pool hop per request); appends to one session take
        turns, so a failed one is still the last node and can be taken back."""
        turn = self._turns.setdefault(session.id, _Turn())
        turn.users += 1
        try:
            async with turn.lock:
                # session.lock stays held until the record is on disk: other threads (a GET, a run,
                # a checkpoint) never see a node that may yet be taken back.
                with session.lock:
                    added = session.add_node(node, links)
                    record = {"session": session.id, "node": added.to_dict(),
                              "links": [[l.from_node, l.from_field, l.to_field] for l in session.graph.links_in[added.id]]}
                    with self._lock:
                        self._dirty[session.id] = session
                    try:
                        await self.journal.write(record)
                    except OSError as exc:
                        session.graph.discard_last(added.id)
                        raise ApiError(507, "not_saved", f"the node was not added: the server cannot write its files "
                                                         f"({exc.strerror or exc})", node_id=added.id) from None
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[session.id]
        return added

    def get(self, session_id: str) -> Session:
        """The live session (raises SessionNotFoundError).  One with appends not in its file yet
        comes from here: the invoker keeps only recently used sessions and would read a stale copy."""
        session = self.pending(session_id)
        return session if session is not None else self.invoker.get_session(session_id)

    def pending(self, session_id: str) -> Session | None:
        """The session if it has appends not in its file yet, else None."""
        with self._lock:
            return self._dirty.get(session_id) or self._saving.get(session_id)

    def forget(self, session_id: str) -> None:
        """Drop a pending save (the session is being deleted); waits for a checkpoint in progress."""
        with self._io, self._lock:
            self._dirty.pop(session_id, None)

    def checkpoint(self) -> None:
        """Write the changed sessions to their files; then their journal records can go."""
        with self._io:
            self.journal.rotate()
            sealed = self.journal.sealed()  # every record in these is in a session taken below
            with self._lock:
                self._saving, self._dirty = self._dirty, {}
            failed = False
            for session in self._saving.values():
                try:
                    # add_session saves it and makes it the invoker's copy again, replacing a
                    # stale one read from disk meanwhile.  Not under session.lock: an append waits
                    # for it on the event loop, which must not stall for a file's fsyncs.
                    self.invoker.add_session(session)
                except OSError as exc:  # a full disk must not stop the server: the journal keeps the appends
                    log.error("saving session %s failed: %s; retrying at the next checkpoint", session.id, exc)
                    with self._lock:
                        self._dirty.setdefault(session.id, session)
                    failed = True
            with self._lock:
                self._saving = {}
            if not failed:
                self.journal.drop(sealed)

    def replay(self) -> None:
        """Apply the journal left by the last run to the session files (appends acknowledged
        but not checkpointed when the server stopped), then drop it."""
        sealed = self.journal.sealed()
        changed: dict[str, Session] = {}
        applied = 0
        for record in self.journal.records(sealed):
            session_id = str(record.get("session"))
            session = changed.get(session_id)
            if session is None:
                try:
                    session = self.invoker.read_session(session_id)
                except SessionNotFoundError:
                    continue  # deleted after the append
                except ValueError as exc:
                    log.error("journal: cannot replay appends to session %s: %s", session_id, exc)
                    continue
            node = record.get("node") or {}
            if node.get("id") in session.graph.nodes:
                continue  # already in the file (checkpointed before the journal was dropped)
            try:
                session.graph.add_node(node, [tuple(link) for link in record.get("links") or ()], strict=False)
            except (GraphError, TypeError, ValueError) as exc:
                log.error("journal: cannot replay node %s of session %s: %s", node.get("id"), session_id, exc)
                continue
            changed[session_id] = session
            applied += 1
        for session in changed.values():
            self.invoker.save(session)
        if changed:
            log.warning("restored %d appended node(s) to %d session(s) from the journal", applied, len(changed))
        self.journal.drop(sealed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.checkpoint()
        self.journal.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._dirty:
                try:
                    self.checkpoint()
                except OSError as exc:  # a new segment could not be made: the current one goes on
                    log.error("checkpoint failed: %s", exc)
