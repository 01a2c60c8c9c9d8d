"""Write-behind saving of sessions that API clients append to.

The session store writes the whole session and fsyncs it on every save (14 ms for a 400-node
session), which would cap appends at a few dozen per second.  Appends change the live session at
once (every request sees them) and are written to disk within `delay` seconds, at the latest on
shutdown; a crash loses at most that window.  Runs, forks and new sessions are still saved by the
engine right away.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, invoker: Any, delay: float = 0.25) -> None:
        self.invoker = invoker
        self.delay = delay
        self._dirty: dict[str, Any] = {}
        self._saving: dict[str, Any] = {}  # taken out of _dirty, being written now
        self._lock = threading.Lock()  # guards _dirty and _saving
        self._io = threading.Lock()  # held while saving, so a deleted session is not written back
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-session-writer", daemon=True)
        self._thread.start()

    def mark(self, session: Any) -> None:
        with self._lock:
            self._dirty[session.id] = session
        self._wake.set()

    def get(self, session_id: str) -> Any:
        """The live session (raises SessionNotFoundError).  One with appends not on disk yet comes
        from here: the invoker keeps only recently used sessions and would read a stale copy."""
        session = self.pending(session_id)
        return session if session is not None else self.invoker.get_session(session_id)

    def pending(self, session_id: str) -> Any | None:
        """The session if it has appends not on disk yet, else None."""
        with self._lock:
            return self._dirty.get(session_id) or self._saving.get(session_id)

    def forget(self, session_id: str) -> None:
        """Drop a pending save (the session is being deleted); waits for a save in progress."""
        with self._io, self._lock:
            self._dirty.pop(session_id, None)

    def flush(self) -> None:
        with self._io:
            with self._lock:
                self._saving, self._dirty = self._dirty, {}
            for session in self._saving.values():
                try:
                    # add_session saves it and makes it the invoker's copy again, replacing a
                    # stale one read from disk meanwhile; the lock keeps a run's results still.
                    with session.lock:
                        self.invoker.add_session(session)
                except Exception:  # a full disk must not kill the writer; the next change retries
                    log.exception("saving session %s failed", session.id)
            with self._lock:
                self._saving = {}

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            self._stop.wait(self.delay)  # gather the appends of this window into one save
            self.flush()
