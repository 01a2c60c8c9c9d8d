"""Crash recovery for the canvas.

A moment after each edit the working graph (the session with its values, links, positions and
results) and the undo/redo history are written, atomically, to `<user data>/recovery/canvas.json`.
Saving, opening a file, discarding the changes and a clean quit remove it; so a recovery file
found at start means the last canvas crashed or was killed with unsaved work, and the view
offers to restore it.

The sessions the undo history switches between are in the session store already (the
controller registers each one); the file holds their ids, and their positions, which change
after they were stored.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.engine.graph import GraphError
from services.engine.session import Session, SessionFormatError
from services.fsutil import atomic_write_text, remove
from services.stores.sessions import SessionNotFoundError

from .controller import CanvasController, MoveStep, SessionStep

log = logging.getLogger(__name__)

RECOVERY_FORMAT = "invoke-nodes/canvas-recovery"
DELAY_S = 0.5  # written this long after the last edit...
MAX_DELAY_S = 3.0  # ...or this long after the first unsaved one, when edits keep coming


@dataclass
class Found:
    """A recovery file left by a canvas that did not quit cleanly."""

    data: dict[str, Any]
    saved: float

    def describe(self) -> str:
        graph = self.data["session"]["graph"]
        name = Path(self.data["path"]).name if self.data.get("path") else "an untitled graph"
        last = next((step["label"] for step in reversed(self.data.get("undo", []))), None)
        return (f"invoke-nodes did not close normally. Unsaved changes to {name} from "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.saved))}: "
                f"{len(graph.get('nodes', []))} nodes, {len(graph.get('links', []))} links"
                + (f", last change: {last}." if last else "."))


class Recovery:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "canvas.json"
        self.controller: CanvasController | None = None
        self._first_edit: float | None = None  # the oldest edit not written yet
        self._last_edit = 0.0

    def find(self) -> Found | None:
        """What a crashed canvas left, or None.  An unreadable file is reported and set aside."""
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text("utf-8"))
            if data.get("format") != RECOVERY_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}")
            Session.from_dict(data["session"])  # checked now, so the offer never fails later
            return Found(data, float(data["saved"]))
        except (OSError, ValueError, KeyError, TypeError, GraphError) as exc:
            log.error("cannot read the recovery file %s: %s; it is kept as %s.bad", self.path, exc, self.path.name)
            try:
                self.path.replace(self.path.with_name(self.path.name + ".bad"))
            except OSError:
                pass
            return None

    def attach(self, controller: CanvasController) -> None:
        """Follow the controller's edits from now on (after the start-up graph is open)."""
        self.controller = controller
        controller.on_dirty = self._changed

    def restore(self, found: Found) -> bool:
        """Bring the recovered graph and its undo history back into the controller."""
        c = self.controller
        assert c is not None, "attach() first"
        data = found.data
        session = Session.from_dict(data["session"])
        c.invoker.mark_stale(session)  # results whose images did not survive the crash re-run
        sessions = {session.id: session}
        try:
            for session_id, ui in data.get("uis", {}).items():
                if session_id not in sessions:
                    sessions[session_id] = c.invoker.get_session(session_id)
                    sessions[session_id].ui = ui
            undo = [_step(s, sessions) for s in data.get("undo", [])]
            redo = [_step(s, sessions) for s in data.get("redo", [])]
        except (SessionNotFoundError, SessionFormatError, GraphError, KeyError, ValueError) as exc:
            log.warning("the undo history of the recovered graph is lost: %s", exc)
            undo, redo = [], []
        c.on_dirty = None  # restoring clears and sets `dirty`: the file must not be removed meanwhile
        c.restore(session, Path(data["path"]) if data.get("path") else None, undo, redo)
        c.on_dirty = self._changed
        self.write()  # the restored work is still unsaved: it stays recoverable
        return True

    def discard(self) -> None:
        """Nothing unsaved any more (saved, opened, discarded, clean quit)."""
        self._first_edit = None
        try:
            remove(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove the recovery file %s: %s", self.path, exc)

    def tick(self) -> None:
        """Once per frame: write when the edits have settled (or have gone on for too long)."""
        if self._first_edit is None:
            return
        now = time.monotonic()
        if now - self._last_edit >= DELAY_S or now - self._first_edit >= MAX_DELAY_S:
            self.write()

    def write(self) -> None:
        c = self.controller
        assert c is not None, "attach() first"
        self._first_edit = None
        steps = [*c.undo_stack, *c.redo_stack]
        lineage = {s.id: s for step in steps if isinstance(step, SessionStep) for s in (step.before, step.after)}
        data = {"format": RECOVERY_FORMAT, "saved": time.time(), "path": str(c.path) if c.path else None,
                "session": c.session.to_dict(),
                "uis": {session_id: s.ui for session_id, s in lineage.items()},
                "undo": [_step_data(s) for s in c.undo_stack], "redo": [_step_data(s) for s in c.redo_stack]}
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:  # the work itself is unharmed: say so once per failure, try again at the next edit
            c.report_error(f"Cannot write the recovery file {self.path}: {exc.strerror or exc}")

    def _changed(self, dirty: bool) -> None:
        if not dirty:
            self.discard()
            return
        self._last_edit = time.monotonic()
        if self._first_edit is None:
            self._first_edit = self._last_edit


def _step_data(step: SessionStep | MoveStep) -> dict[str, Any]:
    if isinstance(step, MoveStep):
        data = {"label": step.label, "moves": {n: [old, new] for n, (old, new) in step.moves.items()}}
        if step.groups:  # a group dragged by its title moved its frame too
            data["groups"] = {str(i): [old, new] for i, (old, new) in step.groups.items()}
        return data
    return {"label": step.label, "before": step.before.id, "after": step.after.id}


def _step(data: dict[str, Any], sessions: dict[str, Session]) -> SessionStep | MoveStep:
    if "moves" in data:
        return MoveStep({n: (list(old), list(new)) for n, (old, new) in data["moves"].items()}, data["label"],
                        {int(i): (list(old), list(new)) for i, (old, new) in data.get("groups", {}).items()})
    return SessionStep(sessions[data["before"]], sessions[data["after"]], data["label"])
