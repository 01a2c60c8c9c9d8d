"""The canvas model/controller: pure Python, no Dear PyGui.

It owns the session being edited and turns gestures (add, link, delete, edit, move, run, cancel,
undo, save, open) into engine calls.  Every graph edit produces a new Session (the engine forks
for everything but appends; adds are made on a clone so that each step of the undo history is
an untouched session), so undo/redo just switches between sessions of the fork lineage; moves
only change `session.ui` and get their own undo steps.

Engine events arrive on the invoker thread; `_on_event` only prepares thumbnail pixels there and
queues them.  The view calls `pump()` once per frame on its own thread and then redraws just
the nodes `take_changed()` names.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from nodes.base import PIN_TYPES, REGISTRY, SEED_MAX, BaseInvocation
from services.engine.events import (NODE_COMPLETED, NODE_FAILED, NODE_PROGRESS, NODE_STARTED, SESSION_CANCELED,
                             SESSION_COMPLETED, Event)
from services.engine.graph import Graph, GraphError, Link
from services.engine.session import COMPLETED, DONE_STATES, PENDING, QUEUED, RUNNING, STALE, Session
from services.invoker import Invoker
from services.stores.sessions import SessionFileError, write_session_file

from .demo import demo_graph, demo_positions
from .schema import PinSpec, pin_spec
from .system import detect_device
from .thumbs import THUMB, fit_rgba

log = logging.getLogger(__name__)

IDLE = "idle"  # shown for PENDING: never run in this session (or changed since)
RECENT_MAX = 10
LOG_MAX = 500
COLUMN, ROW = 280, 200  # auto-layout grid for graphs that come without positions (PNG, API)


class CanvasError(Exception):
    """A gesture the engine refused; the message is what the status bar shows."""


@dataclass
class NodeStatus:
    """What the view shows about one node besides its values."""

    state: str = IDLE
    step: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None
    seconds: float = 0.0
    image_name: str | None = None  # the last image this node produced (viewer, save-as)
    thumb: Any = None  # new thumbnail pixels not yet uploaded (the view takes them)

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


@dataclass
class SessionStep:
    before: Session
    after: Session
    label: str


@dataclass
class MoveStep:
    moves: dict[str, tuple[list[float], list[float]]]  # node id -> (old, new)
    label: str = "move"


def image_output_name(cls: type[BaseInvocation], outputs: dict[str, Any] | None) -> str | None:
    """The image a node's outputs refer to (its first image pin), if any."""
    if not outputs:
        return None
    key = PIN_TYPES["image"].key
    for name, port in cls.outputs().items():
        value = outputs.get(name)
        if port.tag == "image" and isinstance(value, dict) and value.get(key):
            return str(value[key])
    return None


def has_image_output(cls: type[BaseInvocation]) -> bool:
    return any(p.tag == "image" for p in cls.outputs().values())


class CanvasController:
    def __init__(self, invoker: Invoker) -> None:
        self.invoker = invoker
        self.settings = invoker.settings
        self.device = detect_device(getattr(self.settings, "device", "auto"))
        self.session: Session = Session()
        self.path: Path | None = None  # where Ctrl+S writes; None: ask
        self.on_dirty: Callable[[bool], None] | None = None  # told of every edit and save (recovery.py)
        self.dirty = False
        self.undo_stack: list[SessionStep | MoveStep] = []
        self.redo_stack: list[SessionStep | MoveStep] = []
        self.selection: set[str] = set()
        self.status: dict[str, NodeStatus] = {}
        self.revision = 0  # bumped whenever nodes, links, values or positions change: the view re-syncs
        self.message = "Ready"
        self.message_is_error = False
        self.last_error: str | None = None
        self.running_id: str | None = None
        self.running_node: str | None = None
        self._run_started = 0.0
        self._run_graph: Graph = self.session.graph
        self.log: deque[str] = deque(maxlen=LOG_MAX)
        self.log_total = 0  # lines ever logged: the view appends the ones it has not seen
        self._changed: set[str] = set()
        self._models: list[Any] | None = None  # every model found; None until the first list arrives
        self._models_asked = False
        self.models_version = 0  # bumped when a model list arrives: the view refills model combos
        self._events: queue.Queue[tuple[Event | None, Any, str | None]] = queue.Queue()
        self._token: object | None = None  # the subscription to the running session's events
        for error in invoker.plugin_errors:
            self._log(f"plugin error: {error}")

    def close(self) -> None:
        self._unwatch()

    def follow(self, session_id: str) -> None:
        """Receive the events of this session (the one being run) and of no other."""
        self._unwatch()
        self.running_id = session_id
        self._token = self.invoker.subscribe(self._on_event, session_id)

    def _unwatch(self) -> None:
        if self._token is not None:
            self.invoker.unsubscribe(self._token)
            self._token = None

    @property
    def dirty(self) -> bool:
        """Unsaved changes: every edit sets it, saving, opening and discarding clear it."""
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._dirty = value
        if self.on_dirty is not None:
            self.on_dirty(value)

    # --- what there is to show --------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        return self.session.graph

    def palette(self, search: str = "") -> dict[str, list[dict[str, str]]]:
        """Every registered node type grouped by category, filtered by a search text that may
        match the type, title, description, category or tags."""
        words = search.lower().split()
        groups: dict[str, list[dict[str, str]]] = {}
        for node_type in sorted(REGISTRY):
            cls = REGISTRY[node_type]
            entry = {"type": node_type, "title": cls.title(), "description": cls.description(), "category": cls.category}
            haystack = " ".join([*entry.values(), *cls.tags]).lower()
            if all(w in haystack for w in words):
                groups.setdefault(cls.category, []).append(entry)
        return dict(sorted(groups.items()))

    def node_class(self, node_id: str) -> type[BaseInvocation]:
        return self.graph.nodes[node_id].cls

    def title(self, node_id: str) -> str:
        return f"{self.node_class(node_id).title()}  #{node_id}"

    def inputs(self, node_id: str) -> list[PinSpec]:
        return [pin_spec(p) for p in self.node_class(node_id).inputs().values()]

    def outputs(self, node_id: str) -> list[PinSpec]:
        return [pin_spec(p, output=True) for p in self.node_class(node_id).outputs().values()]

    def shows_image(self, node_id: str) -> bool:
        return has_image_output(self.node_class(node_id))

    def value(self, node_id: str, field: str) -> Any:
        node = self.graph.nodes[node_id]
        if field in node.values:
            return node.values[field]
        return node.cls.inputs()[field].default

    def linked_inputs(self, node_id: str) -> set[str]:
        return {link.to_field for link in self.graph.links_in.get(node_id, ())}

    def position(self, node_id: str) -> list[float]:
        return list(self.session.ui.get("positions", {}).get(node_id, (0, 0)))

    def randomized(self, node_id: str, field: str) -> bool:
        return f"{node_id}.{field}" in self.session.ui.get("randomize", [])

    def model_choices(self, model_kind: str | None) -> list[str]:
        """Model ids for a model field.  The list is asked of the invoker once, on a background
        thread (the scan runs where the models load, never here): until it arrives there are no
        choices, and its arrival re-syncs the view."""
        if self._models is None:
            self._ask_models()
            return []
        return sorted(m.id for m in self._models if model_kind is None or m.kind == model_kind)

    def embedding_names(self) -> list[str]:
        """Textual-inversion embeddings found (<models>/embeddings/), as a prompt names them."""
        if self._models is None:
            self._ask_models()
            return []
        return sorted(m.name for m in self._models if m.kind == "embedding")

    def _ask_models(self) -> None:
        if self._models_asked:
            return
        self._models_asked = True

        def fetch() -> None:
            models, problem = [], None
            try:
                models = self.invoker.list_models()
            except Exception as exc:  # noqa: BLE001 - a broken models folder or worker just means no choices
                log.warning("cannot list models", exc_info=True)
                problem = f"cannot list models: {exc}"
            self._events.put((None, models, problem))  # applied by pump() on the render thread

        threading.Thread(target=fetch, name="list-models", daemon=True).start()

    def refresh_models(self) -> None:
        """Ask for the model list again (the models folder changed)."""
        self._models_asked = False
        self._ask_models()

    def take_changed(self) -> set[str]:
        """Nodes whose state, progress or thumbnail changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    @property
    def is_running(self) -> bool:
        return self.running_id is not None

    # --- gestures that edit the graph --------------------------------------------------------

    def add_node(self, node_type: str, pos: Iterable[float] = (0, 0), values: dict[str, Any] | None = None) -> str:
        """Add an unlinked node at `pos` (editor coordinates); returns its id."""
        new = self.session.clone()  # results stay: adding a node changes no other node
        try:
            node = new.add_node({"type": node_type, **(values or {})}, strict=False)
        except GraphError as exc:
            raise self._refuse(f"Cannot add {node_type}: {exc}") from None
        new.change = f"add node {node.id} ({node_type})"
        new.ui.setdefault("positions", {})[node.id] = [float(v) for v in pos]
        self._commit(new, f"add {node_type}")
        self.status[node.id] = NodeStatus()
        return node.id

    def connect(self, from_node: str, from_field: str, to_node: str, to_field: str) -> bool:
        """Link an output to an input.  A refused link is not drawn; `message` says why."""
        link = Link(from_node, from_field, to_node, to_field)
        try:
            new = self.session.add_link(link)
        except GraphError as exc:
            self._refuse(f"Link refused: {exc}")
            return False
        self._commit(new, "link")
        return True

    def delete(self, node_ids: Iterable[str] = (), links: Iterable[Link] = ()) -> bool:
        """Delete nodes (with their links) and links as one undo step."""
        node_ids = [n for n in node_ids if n in self.graph.nodes]
        links = [l for l in links if l in self.graph.links and l.from_node not in node_ids and l.to_node not in node_ids]
        if not node_ids and not links:
            return False
        current = self.session
        for link in links:
            current = self._register(current.delete_link(link))
        for node_id in node_ids:
            current = self._register(current.delete_node(node_id))
        self._commit(current, f"delete {len(node_ids)} node(s), {len(links)} link(s)", registered=True)
        self.selection -= set(node_ids)
        return True

    def set_value(self, node_id: str, field: str, value: Any) -> bool:
        """Edit an input's value (a fork).  False when the engine refuses the value."""
        if node_id not in self.graph.nodes or self.value(node_id, field) == value:
            return False
        try:
            new = self.session.set_value(node_id, field, value)
        except GraphError as exc:
            self._refuse(f"Value refused: {exc}")
            return False
        self._commit(new, f"set {field}")
        return True

    def set_randomize(self, node_id: str, field: str, on: bool) -> None:
        """The seed "randomize" toggle: a new seed is picked before every run."""
        flags = set(self.session.ui.get("randomize", []))
        flags = flags | {f"{node_id}.{field}"} if on else flags - {f"{node_id}.{field}"}
        self.session.ui["randomize"] = sorted(flags)
        self.dirty = True

    def move(self, positions: dict[str, Iterable[float]]) -> bool:
        """Nodes were dragged to new editor positions (one undo step)."""
        store = self.session.ui.setdefault("positions", {})
        moves = {}
        for node_id, pos in positions.items():
            new, old = [float(v) for v in pos], [float(v) for v in store.get(node_id, (0, 0))]
            if node_id in self.graph.nodes and new != old:
                moves[node_id] = (old, new)
                store[node_id] = new
        if not moves:
            return False
        self.undo_stack.append(MoveStep(moves))
        self.redo_stack.clear()
        self.dirty = True
        return True

    def undo(self) -> bool:
        return self._step(self.undo_stack, self.redo_stack, undo=True)

    def redo(self) -> bool:
        return self._step(self.redo_stack, self.undo_stack, undo=False)

    def _step(self, source: list, target: list, undo: bool) -> bool:
        if not source:
            self.say("Nothing to " + ("undo" if undo else "redo"))
            return False
        step = source.pop()
        target.append(step)
        if isinstance(step, MoveStep):
            store = self.session.ui.setdefault("positions", {})
            for node_id, (old, new) in step.moves.items():
                store[node_id] = list(old if undo else new)
            self.revision += 1
        else:
            self._switch(step.before if undo else step.after)
        self.dirty = True
        self.say(("Undid " if undo else "Redid ") + step.label)
        return True

    def _register(self, session: Session) -> Session:
        self.invoker.add_session(session)
        return session

    def _commit(self, new: Session, label: str, *, registered: bool = False) -> None:
        if not registered:
            self._register(new)
        self.undo_stack.append(SessionStep(self.session, new, label))
        self.redo_stack.clear()
        self._switch(new)
        self.dirty = True
        self.say(label.capitalize())

    def _switch(self, session: Session) -> None:
        """Show another session of the lineage: node states come from its results; thumbnails
        already shown stay until that node produces a new image."""
        self.session = session
        for node_id in list(self.status):
            if node_id not in session.graph.nodes:
                del self.status[node_id]
        for node_id in session.graph.order:
            status = self.status.setdefault(node_id, NodeStatus())
            state = session.node_state(node_id)
            status.state = IDLE if state == PENDING else state
            status.step = status.total = 0
            rows = session.results.get(node_id) or []
            status.error = next((r.error for r in rows if r.error), None)
            self._changed.add(node_id)
        self.selection &= set(session.graph.nodes)
        self.revision += 1

    # --- running -----------------------------------------------------------------------------

    def run(self) -> bool:
        """Run every node that has no result yet (the output cache makes unchanged ones free)."""
        if self.is_running:
            self.say("Already running (Esc cancels)")
            return False
        if not self.graph.nodes:
            self.say("Nothing to run: add nodes from the palette or the right-click menu")
            return False
        self._reseed()
        session = self.session
        self._run_graph = session.graph  # read by _on_event on the invoker thread
        self.running_id, self.running_node, self._run_started = session.id, None, time.perf_counter()
        self.invoker.mark_stale(session)  # images deleted since the last run: those nodes show queued too
        for node_id in session.graph.order:
            if session.node_state(node_id) not in DONE_STATES:
                self._set_state(node_id, QUEUED)
        self._log(f"run session {session.id[:8]} ({len(session.graph.nodes)} nodes)")
        self.say("Running...")
        self.follow(session.id)
        self.invoker.invoke(session, run_all=True)
        return True

    def _reseed(self) -> None:
        flags = [f.split(".", 1) for f in self.session.ui.get("randomize", [])]
        flags = [(n, f) for n, f in flags if n in self.graph.nodes and not (self.linked_inputs(n) & {f})]
        if not flags:
            return
        current = self.session
        for node_id, field in flags:
            current = self._register(current.set_value(node_id, field, random.randint(0, SEED_MAX)))
        self._commit(current, "randomize seeds", registered=True)

    def cancel(self) -> bool:
        if not self.is_running:
            return False
        self.invoker.cancel(self.running_id)
        self.say("Canceling...")
        return True

    def _on_event(self, event: Event) -> None:
        """Invoker thread: prepare pixels here (decode + scale), never touch the view."""
        if event.session_id != self.running_id:
            return
        thumb, name = None, None
        try:
            if event.type == NODE_PROGRESS and event.data.get("preview") is not None:
                thumb = fit_rgba(event.data["preview"], THUMB)
            elif event.type == NODE_COMPLETED and event.node_id in self._run_graph.nodes:
                name = image_output_name(self._run_graph.nodes[event.node_id].cls, event.data.get("outputs"))
                if name is not None:
                    thumb = fit_rgba(self.invoker.images.get(name), THUMB)
        except Exception:  # noqa: BLE001 - a missing image must not lose the event
            log.warning("no thumbnail for %s", event.node_id, exc_info=True)
        self._events.put((event, thumb, name))

    def pump(self, limit: int = 10_000) -> int:
        """Render thread, once per frame: apply queued engine events.  Each event only touches
        its node's status (several progress events in one frame collapse into one redraw)."""
        handled = 0
        while handled < limit:
            try:
                event, thumb, name = self._events.get_nowait()
            except queue.Empty:
                break
            handled += 1
            if event is None:  # the model list arrived (see _ask_models): model combos re-sync
                self._models = thumb
                if name is not None:
                    self._log(name)
                self.models_version += 1
                self.revision += 1
                continue
            self._apply(event, thumb, name)
        return handled

    def _apply(self, event: Event, thumb: Any, name: str | None) -> None:
        node_id = event.node_id
        status = self.status.get(node_id) if node_id is not None else None
        data = event.data
        if event.type in (SESSION_COMPLETED, SESSION_CANCELED):
            seconds = time.perf_counter() - self._run_started
            self.running_id = self.running_node = None
            if event.type == SESSION_CANCELED:
                self.say("Canceled")
                self._log("session canceled")
                for node_id, status in self.status.items():
                    if status.state in (QUEUED, RUNNING):
                        self._set_state(node_id, IDLE)
            else:
                failed = len(data.get("errors") or {})
                self.say(f"Finished in {seconds:.1f}s" + (f", {failed} node(s) failed" if failed else ""), error=bool(failed))
                self._log(f"session completed in {seconds:.2f}s" + (f" ({failed} failed)" if failed else ""))
            return
        if status is None:
            return  # a node deleted while the run went on
        if event.type == NODE_STARTED:
            self.running_node = node_id
            status.state, status.step, status.total, status.message, status.error = RUNNING, 0, 0, "", None
            self._log(f"{self.label(node_id)} started")
        elif event.type == NODE_PROGRESS:
            status.state, status.step, status.total = RUNNING, int(data.get("step", 0)), int(data.get("total", 0))
            status.message = str(data.get("message") or "")
        elif event.type == NODE_COMPLETED:
            status.state, status.error, status.step = data.get("state", COMPLETED), None, status.total
            if status.state == COMPLETED:
                self._log(f"{self.label(node_id)} {status.state}")
        elif event.type == NODE_FAILED:
            status.state, status.error = data.get("state", "failed"), data.get("error")
            self._log(f"{self.label(node_id)} {status.state}: {status.error}")
            if status.state == "failed":
                self.last_error = f"{self.label(node_id)}: {status.error}"
        if thumb is not None:
            status.thumb = thumb
        if name is not None:
            status.image_name = name
        self._changed.add(node_id)

    def _set_state(self, node_id: str, state: str) -> None:
        status = self.status.setdefault(node_id, NodeStatus())
        status.state, status.step, status.total = state, 0, 0
        self._changed.add(node_id)

    def label(self, node_id: str) -> str:
        node = self.graph.nodes.get(node_id)
        return f"{node.type} #{node_id}" if node else f"#{node_id}"

    # --- files -------------------------------------------------------------------------------

    def new_demo(self) -> None:
        session = Session(Graph.from_dict(demo_graph()), change="demo graph", ui={"positions": demo_positions()})
        self._replace(session, None, "Demo graph: press Run (Ctrl+Enter), then change a value and run again")

    def restore(self, session: Session, path: Path | None, undo: list[SessionStep | MoveStep],
                redo: list[SessionStep | MoveStep]) -> None:
        """Bring back work a crash left unsaved (recovery.py reads it), with its undo history."""
        self._replace(session, path, "Restored the unsaved changes")
        self.undo_stack[:], self.redo_stack[:] = undo, redo
        self.dirty = True

    def open_example(self, name: str) -> None:
        """An example graph as a new unsaved session (laid out automatically)."""
        from app.examples import example

        found = example(name)
        self._replace(Session(Graph.from_dict(found.graph), change=f"example {name}"), None,
                      f"Example: {found.title} ({found.description}) Pick your models, then Run.")

    def save(self, path: str | Path | None = None) -> bool:
        """Write the session (graph, positions, results) as JSON.  False when no path is known
        yet (the view then asks for one) or the write failed."""
        target = Path(path) if path is not None else self.path
        if target is None:
            return False
        try:
            write_session_file(self.session, target)
        except OSError as exc:
            self._refuse(f"Cannot save {target}: {exc.strerror or exc}")
            return False
        self.path, self.dirty = target, False
        self._remember(target)
        self.say(f"Saved {target}")
        return True

    def open(self, path: str | Path) -> bool:
        """Open a session JSON or a PNG the app made.  A bad file leaves the current graph as is."""
        path = Path(path)
        try:
            session = self.invoker.open_session(path)  # results whose images are gone here come back stale
        except SessionFileError as exc:
            self._refuse(f"Cannot open: {exc}")
            return False
        stale = sum(session.node_state(n) == STALE for n in session.graph.order)
        self._replace(session, path if path.suffix.lower() != ".png" else None, f"Opened {path}" + (
            f"; {stale} node(s) stale, their images are not here: Run makes them again" if stale else ""))
        self._remember(path)
        return True

    def _replace(self, session: Session, path: Path | None, message: str) -> None:
        positions = session.ui.setdefault("positions", {})
        missing = [n for n in session.graph.order if n not in positions]
        if missing:
            positions.update(auto_layout(session.graph, missing))
        self._register(session)
        self.status.clear()
        self.undo_stack.clear()
        self.redo_stack.clear()
        self.selection.clear()
        self._switch(session)
        for node_id in session.graph.order:  # saved results: show their images again
            name = next((image_output_name(session.graph.nodes[node_id].cls, o) for o in session.outputs(node_id)), None)
            if name is not None and self.invoker.images.exists(name):
                self.status[node_id].image_name = name
                self.status[node_id].thumb = fit_rgba(self.invoker.images.get(name), THUMB)
        self.path, self.dirty = path, False
        self.say(message)
        self._log(message)

    def _remember(self, path: Path) -> None:
        entry = str(path.resolve())
        recent = [entry] + [p for p in self.settings.recent_files if p != entry]
        self.settings.recent_files = recent[:RECENT_MAX]
        self._save_settings()

    def load_image(self, image_name: str) -> Any:
        """A stored image for the viewer, or None (reported) when it is gone or unreadable."""
        try:
            return self.invoker.images.get(image_name)
        except (KeyError, OSError) as exc:
            self.report_error(f"Cannot open image {image_name}: {exc}")
            return None

    def export_image(self, image_name: str, target: str | Path) -> bool:
        """Viewer "Save as": copy the stored PNG (it carries the graph that made it)."""
        target = Path(target)
        if target.suffix.lower() != ".png":
            target = target.with_suffix(".png")
        try:
            self.invoker.images.export(image_name, target)
        except (OSError, KeyError) as exc:
            self.report_error(f"Cannot save {target}: {getattr(exc, 'strerror', None) or exc}")
            return False
        self.say(f"Saved image {target}")
        return True

    def update_settings(self, *, models_dir: str | None = None, outputs_dir: str | None = None, theme: str | None = None) -> None:
        if models_dir is not None:
            self.settings.models_dir = Path(models_dir).expanduser()
        if outputs_dir is not None:
            self.settings.outputs_dir = Path(outputs_dir).expanduser()
        if theme is not None:
            self.settings.theme = theme
        if self._save_settings():
            self.say("Settings saved (a new outputs folder is used from the next start)")
            if models_dir is not None:
                self.refresh_models()

    def _save_settings(self) -> bool:
        try:
            self.invoker.save_settings()
            return True
        except OSError as exc:
            self._refuse(f"Cannot save settings: {exc}")
            return False

    # --- messages ----------------------------------------------------------------------------

    def say(self, text: str, error: bool = False) -> None:
        self.message, self.message_is_error = text, error

    def report_error(self, text: str) -> None:
        """Status bar (in red), "last error" and the log."""
        self.say(text, error=True)
        self.last_error = text
        self._log(text)

    def _refuse(self, text: str) -> CanvasError:
        self.report_error(text)
        return CanvasError(text)

    def _log(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')}  {text}")
        self.log_total += 1


def auto_layout(graph: Graph, node_ids: Iterable[str]) -> dict[str, list[float]]:
    """Columns by link depth (nodes are in topological order), rows in order within a column."""
    depth: dict[str, int] = {}
    for node_id in graph.order:
        depth[node_id] = max((depth[l.from_node] + 1 for l in graph.links_in.get(node_id, ())), default=0)
    rows: dict[int, int] = {}
    placed = {}
    for node_id in node_ids:
        column = depth.get(node_id, 0)
        placed[node_id] = [float(20 + COLUMN * column), float(20 + ROW * rows.get(column, 0))]
        rows[column] = rows.get(column, 0) + 1
    return placed

