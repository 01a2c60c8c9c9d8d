"""The canvas model/controller: pure Python, no Dear PyGui.

It owns the session being edited and turns gestures (add, link, delete, edit, move, run, cancel,
undo, save, open) into engine calls.  Every graph edit produces a new Session (the engine forks
for everything but appends; adds are made on a clone so that each step of the undo history is
an untouched session), so undo/redo just switches between sessions of the fork lineage; moves
only change `session.ui` and get their own undo steps.

Engine events arrive on the invoker thread; `_on_event` only prepares thumbnail pixels there and
queues them.  The view calls `pump()` once per frame on its own thread and then redraws just
the nodes `take_changed()` names.

Runs are queue entries (`queue`): Run xN queues N sessions (forks with new seeds), "run to here"
one that runs only some nodes; each entry follows its own session's events, and images they make
go to the `gallery`.  Positions, groups, bypass flags and seed toggles live in `session.ui`; the
view draws positions through a `Viewport` (the emulated zoom).
"""
from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from nodes.base import PIN_TYPES, REGISTRY, SEED_MAX, BaseInvocation, is_compatible, list_item_tag
from services.engine.events import (NODE_COMPLETED, NODE_FAILED, NODE_PROGRESS, NODE_STARTED, SESSION_CANCELED,
                             SESSION_COMPLETED, Event)
from services.engine.graph import Graph, GraphError, Link
from services.engine.session import (CANCELED, COMPLETED, DONE_STATES, FAILED, PENDING, QUEUED, RUNNING, SKIPPED,
                                     STALE, Session)
from services.invoker import Invoker
from nodes.core.untrusted import MAX_JSON_BYTES, UntrustedInputError, regular_file
from services.importers import ImportFormatError, ImportReport, detect
from services.stores.sessions import SessionFileError, write_session_file

from .demo import demo_graph, demo_positions
from .schema import PinSpec, pin_spec
from .system import detect_device
from .thumbs import THUMB, fit_rgba

log = logging.getLogger(__name__)

IDLE = "idle"  # shown for PENDING: never run in this session (or changed since)
RECENT_MAX = 10
QUEUE_KEEP = 30  # finished queue entries kept in the panel
GALLERY_MAX = 200
LOG_MAX = 500
NODE_WIDTH = 200.0  # the narrowest node (title, pins)
WIDGET_WIDTH = 140  # an input's widget on a node (the view draws them this wide at 100%)
GAP = 30.0  # between nodes placed automatically
CLIPBOARD_FORMAT = "invoke-nodes/nodes"
GROUP_COLOURS = ((90, 140, 200), (120, 180, 110), (200, 150, 80), (180, 100, 170), (200, 90, 90), (110, 170, 170))


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
class QueueEntry:
    """One queued run as the queue panel shows it."""

    session_id: str
    label: str
    graph: Graph
    state: str = QUEUED  # queued | running | completed | failed | canceled
    added: float = field(default_factory=time.time)
    started: float | None = None  # the time of its first event
    seconds: float | None = None
    only: frozenset[str] | None = None
    failed: set[str] = field(default_factory=set)
    token: object | None = None  # the subscription to its events


@dataclass
class GalleryItem:
    image_name: str
    node_id: str
    session_id: str
    made: float


@dataclass
class SessionStep:
    before: Session
    after: Session
    label: str


@dataclass
class MoveStep:
    moves: dict[str, tuple[list[float], list[float]]]  # node id -> (old, new)
    label: str = "move"
    groups: dict[int, tuple[list[float], list[float]]] = field(default_factory=dict)  # group index -> (old, new) rect


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


CLUSTER_POLL_S = 3.0


def cluster_line(info: dict[str, Any]) -> str | None:
    """The status bar's words for `Invoker.cluster()`: None when nodes run on this machine."""
    workers = info.get("workers") or []
    if not workers:
        return None
    busy = sum(1 for w in workers if w.get("state") == "busy")
    lost = sum(1 for w in workers if w.get("state") == "unavailable")
    text = f"Cluster: {len(workers)} worker{'s' if len(workers) != 1 else ''}, {busy} busy"
    return text + (f", {lost} unavailable" if lost else "")


class CanvasController:
    def __init__(self, invoker: Invoker) -> None:
        self.invoker = invoker
        self.settings = invoker.settings
        self.device = detect_device(getattr(self.settings, "device", "auto"))
        self.cluster_line: str | None = None
        self._closed = threading.Event()
        if getattr(self.settings, "cluster", None):
            threading.Thread(target=self._watch_cluster, name="cluster-status", daemon=True).start()
        self.session: Session = Session()
        self.path: Path | None = None  # where Ctrl+S writes; None: ask
        self.import_report: ImportReport | None = None  # of the last import, for the view's dialog
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
        self.running_node: str | None = None
        self.queue: list[QueueEntry] = []  # runs this window queued: waiting, running, and the last ones done
        self.gallery: list[GalleryItem] = []  # images the runs made, newest first
        self.gallery_version = 0  # bumped when an image is added: the view redraws the gallery
        self.log: deque[str] = deque(maxlen=LOG_MAX)
        self.log_total = 0  # lines ever logged: the view appends the ones it has not seen
        self._changed: set[str] = set()
        self._models: list[Any] | None = None  # every model found; None until the first list arrives
        self._models_asked = False
        self.models_version = 0  # bumped when a model list arrives: the view refills model combos
        self.sizes: dict[str, tuple[float, float]] = {}  # drawn node sizes (model units), reported by the view
        self._events: queue.Queue[tuple[Event | None, Any, str | None]] = queue.Queue()
        for error in invoker.plugin_errors:
            self._log(f"plugin error: {error}")

    def close(self) -> None:
        self._closed.set()
        self._unwatch()

    def _watch_cluster(self) -> None:
        """With a cluster configured, ask it now and then what its workers do (never on the render
        thread: a busy cluster may take a moment to answer); the status bar shows `cluster_line`."""
        while not self._closed.wait(0 if self.cluster_line is None else CLUSTER_POLL_S):
            try:
                self.cluster_line = cluster_line(self.invoker.cluster())
            except Exception as exc:  # noqa: BLE001 - a lost cluster is shown, not raised
                self.cluster_line = f"Cluster: not answering ({exc})"

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

    def palette(self, search: str = "", types: set[str] | None = None) -> dict[str, list[dict[str, str]]]:
        """Every registered node type grouped by category, filtered by a search text that may
        match the type, title, description, category or tags (and to `types` when given)."""
        words = search.lower().split()
        groups: dict[str, list[dict[str, str]]] = {}
        for node_type in sorted(REGISTRY if types is None else set(REGISTRY) & types):
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

    # --- gestures that edit the graph --------------------------------------------------------

    def add_node(self, node_type: str, pos: Iterable[float] = (0, 0), values: dict[str, Any] | None = None,
                 *, place: bool = False, links: Iterable[Link] = ()) -> str:
        """Add a node at `pos` (editor coordinates) with links into it from existing nodes; returns
        its id.  place: move it to the nearest spot where it covers no other node.  A required
        model input gets the first model of its kind (a blank one would only fail the run)."""
        new = self.session.clone()  # results stay: adding a node changes no other node
        values = {**self._default_models(node_type), **(values or {})}
        try:
            node = new.add_node({"type": node_type, **values}, [l for l in links], strict=False)
        except GraphError as exc:
            raise self._refuse(f"Cannot add {node_type}: {exc}") from None
        new.change = f"add node {node.id} ({node_type})"
        pos = [float(v) for v in pos]
        if place:
            pos = self.free_spot(pos, estimate_size(node.cls))
        new.ui.setdefault("positions", {})[node.id] = pos
        self._commit(new, f"add {node_type}")
        self.status[node.id] = NodeStatus()
        return node.id

    def _default_models(self, node_type: str) -> dict[str, str]:
        cls = REGISTRY.get(node_type)
        if cls is None or self._models is None:
            return {}
        chosen = {}
        for name, port in cls.inputs().items():
            if port.kind == "model" and port.required and port.default is None:
                choices = self.model_choices(port.model_kind)
                if choices:
                    chosen[name] = choices[0]
        return chosen

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

    def move(self, positions: dict[str, Iterable[float]], force: bool = False) -> bool:
        """Nodes were dragged to new editor positions (one undo step; force: even if none moved)."""
        store = self.session.ui.setdefault("positions", {})
        moves = {}
        for node_id, pos in positions.items():
            new, old = [float(v) for v in pos], [float(v) for v in store.get(node_id, (0, 0))]
            if node_id in self.graph.nodes and new != old:
                moves[node_id] = (old, new)
                store[node_id] = new
        if not moves and not force:
            return False
        self.undo_stack.append(MoveStep(moves))
        self.redo_stack.clear()
        self.dirty = True
        self.revision += 1  # a drag already shows it; a move from code (group, tests) must be drawn
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
            for index, (old, new) in step.groups.items():
                if index < len(self.groups):
                    self.groups[index]["rect"] = list(old if undo else new)
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

    # --- placement -----------------------------------------------------------------------------

    def node_rect(self, node_id: str) -> tuple[float, float, float, float]:
        """(x, y, w, h) in model coordinates: the drawn size the view reported, else an estimate."""
        x, y = self.position(node_id)
        w, h = self.sizes.get(node_id) or estimate_size(self.node_class(node_id))
        return x, y, w, h

    def free_spot(self, pos: Iterable[float], size: tuple[float, float], exclude: Iterable[str] = ()) -> list[float]:
        """The spot nearest `pos` (tried down, right, then both) where a node of `size` covers no other."""
        x, y = (float(v) for v in pos)
        w, h = size
        skip = set(exclude)
        rects = [self.node_rect(n) for n in self.graph.order if n not in skip]
        for ring in range(0, 40):
            for dx, dy in ((0, ring), (ring, 0), (ring, ring), (-ring, ring), (ring, -ring)):
                spot = (x + dx * 40, y + dy * 40, w, h)
                if not any(overlaps(spot, r, 10) for r in rects):
                    return [spot[0], spot[1]]
        return [x, y]

    def report_sizes(self, sizes: dict[str, tuple[float, float]]) -> None:
        """The view measured drawn nodes (model units); placement uses them from now on."""
        self.sizes.update(sizes)

    # --- selection and clipboard -------------------------------------------------------------

    def select_all(self) -> set[str]:
        self.selection = set(self.graph.nodes)
        return set(self.selection)

    def copy(self, node_ids: Iterable[str] | None = None) -> str | None:
        """The selection as JSON text (nodes, the links among them, positions): what Ctrl+C puts on
        the system clipboard, so another window of the app can paste it."""
        ids = [n for n in self.graph.order if n in set(self.selection if node_ids is None else node_ids)]
        if not ids:
            self.say("Nothing selected to copy (click a node, or Ctrl+A)")
            return None
        inside = set(ids)
        data = {"format": CLIPBOARD_FORMAT,
                "nodes": [self.graph.nodes[n].to_dict() for n in ids],
                "links": [l.to_dict() for l in self.graph.links if l.from_node in inside and l.to_node in inside],
                "positions": {n: self.position(n) for n in ids}}
        self.say(f"Copied {len(ids)} node(s)")
        return json.dumps(data)

    def paste(self, text: str | None, at: Iterable[float] | None = None) -> list[str]:
        """Add copied nodes (one undo step) with the links among them; their top-left corner lands
        at `at` (else 40 px right and down of the originals).  Returns the new ids, now selected."""
        try:
            data = json.loads(text or "")
            if not isinstance(data, dict) or data.get("format") != CLIPBOARD_FORMAT:
                raise ValueError
            nodes, links, positions = data["nodes"], data.get("links", []), data.get("positions", {})
        except (ValueError, KeyError, TypeError):
            self.say("The clipboard holds no invoke-nodes nodes (copy some with Ctrl+C)", error=True)
            return []
        xs = [p[0] for p in positions.values()] or [0.0]
        ys = [p[1] for p in positions.values()] or [0.0]
        dx, dy = (40.0, 40.0) if at is None else (list(at)[0] - min(xs), list(at)[1] - min(ys))
        new = self.session.clone()
        mapping: dict[str, str] = {}
        try:
            for raw in nodes:
                raw = dict(raw)
                old_id = str(raw.pop("id"))
                raw.pop("version", None)
                into = [Link(mapping[l["from_node"]], l["from_field"], "", l["to_field"]) for l in links
                        if l["to_node"] == old_id and l["from_node"] in mapping]
                node = new.add_node(raw, into, strict=False)
                mapping[old_id] = node.id
                x, y = positions.get(old_id, (0, 0))
                new.ui.setdefault("positions", {})[node.id] = [float(x) + dx, float(y) + dy]
        except (GraphError, KeyError, TypeError) as exc:
            self._refuse(f"Cannot paste: {exc}")
            return []
        new.change = f"paste {len(mapping)} node(s)"
        self._commit(new, f"paste {len(mapping)} node(s)")
        for node_id in mapping.values():
            self.status[node_id] = NodeStatus()
        self.selection = set(mapping.values())
        return list(mapping.values())

    def duplicate(self, node_ids: Iterable[str] | None = None) -> list[str]:
        """Ctrl+D: copy and paste in one gesture (links inside the selection kept)."""
        text = self.copy(node_ids)
        if text is None:
            return []
        added = self.paste(text)
        if added:
            self.say(f"Duplicated {len(added)} node(s)")
        return added

    # --- links: search from a dropped link, reroutes -----------------------------------------

    def compatible_types(self, node_id: str, field: str, output: bool = True) -> set[str]:
        """Node types with an input that an output pin can feed (output=False: with an output
        that can feed this input): the node search after a link is dropped on empty canvas."""
        if output:
            tag = self.graph.output_tag(node_id, field)
            return {t for t, cls in REGISTRY.items() if any(is_compatible(tag, p.tag) or
                    (p.collect and is_compatible(tag, list_item_tag(p.tag) or p.tag)) for p in cls.inputs().values())}
        tag = self.node_class(node_id).inputs()[field].tag
        return {t for t, cls in REGISTRY.items() if any(is_compatible(p.tag, tag) for p in cls.outputs().values())}

    def add_linked(self, node_type: str, pos: Iterable[float], node_id: str, field: str, output: bool = True) -> str | None:
        """A node picked in the search after a link was dropped: added already linked to that pin."""
        cls = REGISTRY.get(node_type)
        if cls is None:
            return None
        if output:
            tag = self.graph.output_tag(node_id, field)
            inputs = cls.inputs()
            target = next((n for n, p in inputs.items() if p.tag == tag), None) or \
                next((n for n, p in inputs.items() if is_compatible(tag, p.tag) and p.tag != "any"), None) or \
                next((n for n, p in inputs.items() if is_compatible(tag, p.tag) or p.collect), None)
            if target is None:
                self.say(f"{node_type} has no input that takes {tag}", error=True)
                return None
            try:
                return self.add_node(node_type, pos, links=[Link(node_id, field, "", target)])
            except CanvasError:
                return None
        tag = self.node_class(node_id).inputs()[field].tag
        source = next((n for n, p in cls.outputs().items() if is_compatible(p.tag, tag)), None)
        if source is None:
            self.say(f"{node_type} has no output that feeds {tag}", error=True)
            return None
        try:
            new_id = self.add_node(node_type, pos)
        except CanvasError:
            return None
        self.connect(new_id, source, node_id, field)
        return new_id

    def insert_reroute(self, link: Link, pos: Iterable[float]) -> str | None:
        """Right-click on a link → "Insert reroute": source → reroute → target, one undo step."""
        if link not in self.graph.links:
            return None
        new = self.session.clone()
        try:
            node = new.add_node({"type": "reroute"}, [Link(link.from_node, link.from_field, "", "value")], strict=False)
            new.change = f"add node {node.id} (reroute)"
            new.ui.setdefault("positions", {})[node.id] = self.free_spot(pos, estimate_size(node.cls))
            current = self._register(new)
            current = self._register(current.delete_link(link))
            current = self._register(current.add_link(Link(node.id, "value", link.to_node, link.to_field)))
        except GraphError as exc:
            self._refuse(f"Cannot insert a reroute: {exc}")
            return None
        self._commit(current, "insert reroute", registered=True)
        self.status[node.id] = NodeStatus()
        return node.id

    # --- groups (titled frames kept in session.ui) -------------------------------------------

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self.session.ui.setdefault("groups", [])

    def add_group(self, node_ids: Iterable[str] | None = None, title: str = "Group") -> int | None:
        """A frame around the nodes (the selection by default), 20 px of margin and a title band."""
        ids = [n for n in (self.selection if node_ids is None else node_ids) if n in self.graph.nodes]
        if not ids:
            self.say("Select the nodes to group first", error=True)
            return None
        rects = [self.node_rect(n) for n in ids]
        x0, y0 = min(r[0] for r in rects) - 20, min(r[1] for r in rects) - 50
        x1, y1 = max(r[0] + r[2] for r in rects) + 20, max(r[1] + r[3] for r in rects) + 20
        colour = GROUP_COLOURS[len(self.groups) % len(GROUP_COLOURS)]
        self.groups.append({"title": title, "rect": [x0, y0, x1 - x0, y1 - y0], "colour": list(colour), "collapsed": False})
        self._ui_changed(f"Grouped {len(ids)} node(s)")
        return len(self.groups) - 1

    def group_members(self, index: int) -> list[str]:
        """The nodes whose centre lies inside the group's frame."""
        x, y, w, h = self.groups[index]["rect"]
        members = []
        for node_id in self.graph.order:
            nx, ny, nw, nh = self.node_rect(node_id)
            if x <= nx + nw / 2 <= x + w and y <= ny + nh / 2 <= y + h:
                members.append(node_id)
        return members

    def move_group(self, index: int, dx: float, dy: float) -> bool:
        """Drag a group by its title: the frame and its nodes move together (one undo step)."""
        if not (dx or dy) or not 0 <= index < len(self.groups):
            return False
        members = self.group_members(index)
        group = self.groups[index]
        old_rect = list(group["rect"])
        group["rect"] = [old_rect[0] + dx, old_rect[1] + dy, old_rect[2], old_rect[3]]
        self.move({n: (self.position(n)[0] + dx, self.position(n)[1] + dy) for n in members}, force=True)
        self.undo_stack[-1].groups = {index: (old_rect, list(group["rect"]))}
        self.revision += 1
        return True

    def set_group(self, index: int, *, title: str | None = None, colour: Iterable[int] | None = None,
                  collapsed: bool | None = None) -> None:
        group = self.groups[index]
        if title is not None:
            group["title"] = title
        if colour is not None:
            group["colour"] = list(colour)
        if collapsed is not None:
            group["collapsed"] = collapsed
        self._ui_changed("Group " + ("collapsed" if collapsed else "expanded" if collapsed is False else "changed"))

    def delete_group(self, index: int) -> None:
        """Remove the frame; its nodes stay."""
        del self.groups[index]
        self._ui_changed("Group removed (its nodes stay)")

    def hidden_nodes(self) -> set[str]:
        """Nodes inside collapsed groups (the view does not draw them)."""
        return {n for i, g in enumerate(self.groups) if g.get("collapsed") for n in self.group_members(i)}

    def group_at(self, point: Iterable[float]) -> int | None:
        """The group whose title band (the top 30 model units of its frame) holds a model point."""
        px, py = point
        for index in reversed(range(len(self.groups))):
            x, y, w, h = self.groups[index]["rect"]
            if x <= px <= x + w and y <= py <= y + 30:
                return index
        return None

    def _ui_changed(self, message: str) -> None:
        self.dirty = True
        self.revision += 1
        self.say(message)

    # --- bypass ------------------------------------------------------------------------------

    def bypassed(self, node_id: str) -> bool:
        return node_id in self.session.ui.get("bypass", [])

    def set_bypass(self, node_ids: Iterable[str], on: bool) -> bool:
        """Bypass: the node passes its inputs through to outputs of the same type without running
        (ComfyUI's Ctrl+B).  A fork of the node (a new value of its hidden flag) so that it and
        what follows run again."""
        changed = False
        current = self.session
        for node_id in node_ids:
            if node_id in self.graph.nodes and self.bypassed(node_id) != on:
                current = self._register(current.fork(f"bypass {node_id} {'on' if on else 'off'}"))
                flags = set(current.ui.get("bypass", []))
                current.ui["bypass"] = sorted(flags | {node_id} if on else flags - {node_id})
                changed = True
        if changed:
            self._commit(current, "bypass" if on else "bypass off", registered=True)
        return changed

    # --- the last workflow (restored on the next start) --------------------------------------

    @property
    def last_workflow_path(self) -> Path:
        return Path(self.settings.config_dir) / "last_workflow.json"

    def save_last_workflow(self) -> None:
        """On quit: the graph as it is (saved or not) opens again on the next start."""
        try:
            self.last_workflow_path.parent.mkdir(parents=True, exist_ok=True)
            write_session_file(self.session, self.last_workflow_path)
        except OSError:
            log.warning("cannot keep the last workflow", exc_info=True)

    def restore_last_workflow(self) -> bool:
        """On start: the graph of the last session; False (nothing changed) the very first time."""
        path = self.last_workflow_path
        if not path.is_file():
            return False
        try:
            session = self.invoker.open_session(path)  # results whose images are gone come back stale
        except SessionFileError as exc:
            self._log(f"the last workflow could not be restored: {exc}")
            return False
        self._replace(session, None, "Restored the last workflow")
        return True

    # --- running: the queue ------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return any(e.state in (QUEUED, RUNNING) for e in self.queue)

    @property
    def running_id(self) -> str | None:
        """The session running now (else the next one waiting), None when the queue is idle."""
        active = [e for e in self.queue if e.state in (QUEUED, RUNNING)]
        chosen = [e for e in active if e.state == RUNNING] or active
        return chosen[0].session_id if chosen else None

    def run(self, times: int = 1, only: Iterable[str] | None = None, label: str = "run") -> bool:
        """Queue a run of every node that has no result yet (the output cache makes unchanged
        ones free).  times > 1 ("Run xN"): N runs, each with new seeds.  only: just these nodes."""
        if not self.graph.nodes:
            self.say("Nothing to run: add nodes from the palette or the right-click menu")
            return False
        if only is None and times == 1 and self._entry(self.session.id, active=True) is not None:
            self.say("Already running (Esc cancels)")
            return False
        self._reseed()
        self.invoker.mark_stale(self.session)  # images deleted since the last run: those nodes show queued too
        sessions = [self.session]
        for _ in range(times - 1):  # each further run: a fork of the graph with every free seed new
            current = self.session
            for node_id, field in self.seed_fields():
                current = current.set_value(node_id, field, random.randint(0, SEED_MAX))
            sessions.append(self._register(current))
        only_set = frozenset(only) if only is not None else None
        for index, session in enumerate(sessions):
            self._enqueue(session, f"{label} {index + 1}/{times}" if times > 1 else label, only_set)
        if self.session.id == sessions[0].id:
            for node_id in self.session.graph.order:
                if self.session.node_state(node_id) not in DONE_STATES and (only_set is None or node_id in only_set):
                    self._set_state(node_id, QUEUED)
        self.last_error = None  # a new run: the previous one's error is history (the log keeps it)
        self.say("Running..." if times == 1 else f"Queued {times} runs")
        return True

    def run_to_here(self, node_ids: Iterable[str]) -> bool:
        """Run only these nodes and what they depend on (ComfyUI's "queue selected output")."""
        targets = [n for n in node_ids if n in self.graph.nodes]
        if not targets:
            self.say("Select the node to run up to first", error=True)
            return False
        return self.run(only=self.ancestors(targets), label="run to " + ", ".join(self.label(n) for n in targets))

    def ancestors(self, node_ids: Iterable[str]) -> set[str]:
        """The nodes and everything they take input from, directly or not."""
        seen: set[str] = set()
        todo = list(node_ids)
        while todo:
            node_id = todo.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            todo.extend(l.from_node for l in self.graph.links_in.get(node_id, ()))
        return seen

    def seed_fields(self) -> list[tuple[str, str]]:
        """Unlinked seed inputs: what "Run xN" and "randomize" give new values."""
        return [(n, name) for n in self.graph.order for name, port in self.node_class(n).inputs().items()
                if port.kind == "seed" and name not in self.linked_inputs(n)]

    def _enqueue(self, session: Session, label: str, only: frozenset[str] | None) -> None:
        entry = QueueEntry(session.id, label, session.graph, only=only)
        entry.token = self.invoker.subscribe(self._on_event, session.id)  # before invoking: no event is missed
        self.queue.append(entry)
        done = [e for e in self.queue if e.state not in (QUEUED, RUNNING)]
        for old in done[:max(0, len(done) - QUEUE_KEEP)]:
            self.queue.remove(old)
        self._log(f"queued {label}: session {session.id[:8]} ({len(session.graph.nodes)} nodes)")
        self.invoker.invoke(session, run_all=True, only=only)

    def _entry(self, session_id: str | None, active: bool = False) -> QueueEntry | None:
        for entry in reversed(self.queue):  # a session run again: its newest entry
            if entry.session_id == session_id and (not active or entry.state in (QUEUED, RUNNING)):
                return entry
        return None

    def follow(self, session_id: str) -> None:
        """Receive the events of this session as if the canvas had queued it (tests, benchmarks)."""
        if self._entry(session_id, active=True) is None:
            entry = QueueEntry(session_id, "followed", self.graph, state=RUNNING)
            entry.token = self.invoker.subscribe(self._on_event, session_id)
            self.queue.append(entry)

    def _unwatch(self) -> None:
        for entry in self.queue:
            if entry.token is not None:
                self.invoker.unsubscribe(entry.token)
                entry.token = None

    def _reseed(self) -> None:
        flags = [f.split(".", 1) for f in self.session.ui.get("randomize", [])]
        flags = [(n, f) for n, f in flags if n in self.graph.nodes and not (self.linked_inputs(n) & {f})]
        if not flags:
            return
        current = self.session
        for node_id, field in flags:
            current = self._register(current.set_value(node_id, field, random.randint(0, SEED_MAX)))
        self._commit(current, "randomize seeds", registered=True)

    def cancel(self, session_id: str | None = None) -> bool:
        """Cancel one queue entry, or (Esc) everything queued and running."""
        entries = [e for e in self.queue if e.state in (QUEUED, RUNNING) and session_id in (None, e.session_id)]
        if not entries:
            return False
        for entry in entries:
            self.invoker.cancel(entry.session_id)
        self.say("Canceling...")
        return True

    def move_queued(self, session_id: str, delta: int) -> bool:
        """Re-order a waiting entry (negative delta: sooner)."""
        if not self.invoker.move_queued(session_id, delta):
            return False
        order = self.invoker.queued()
        waiting = sorted((e for e in self.queue if e.state == QUEUED), key=lambda e: order.index(e.session_id)
                         if e.session_id in order else -1)
        slots = [i for i, e in enumerate(self.queue) if e.state == QUEUED]
        for slot, entry in zip(slots, waiting):
            self.queue[slot] = entry
        return True

    def pause_queue(self, paused: bool) -> None:
        self.invoker.pause(paused)
        self.say("Queue paused: the running entry finishes, nothing new starts" if paused else "Queue resumed")

    @property
    def queue_paused(self) -> bool:
        return self.invoker.paused

    def _on_event(self, event: Event) -> None:
        """Invoker thread: prepare pixels here (decode + scale), never touch the view."""
        entry = self._entry(event.session_id)
        if entry is None:
            return
        graph = entry.graph
        thumb, name = None, None
        try:
            if event.type == NODE_PROGRESS and event.data.get("preview") is not None:
                thumb = fit_rgba(event.data["preview"], THUMB)
            elif event.type == NODE_COMPLETED and event.node_id in graph.nodes:
                name = image_output_name(graph.nodes[event.node_id].cls, event.data.get("outputs"))
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
        entry = self._entry(event.session_id)
        if entry is None:
            return
        node_id = event.node_id
        status = self.status.get(node_id) if node_id is not None else None
        data = event.data
        if entry.started is None:
            entry.started = event.time  # its first event (times come from the events: pump() may run late)
        if event.type in (SESSION_COMPLETED, SESSION_CANCELED):
            self._finish_entry(entry, event, canceled=event.type == SESSION_CANCELED)
            return
        if entry.state == QUEUED:
            entry.state = RUNNING
        if node_id is not None and event.type == NODE_FAILED and data.get("state") == "failed":
            entry.failed.add(node_id)
        if name is not None:
            self._add_to_gallery(name, node_id, entry.session_id)
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
            status.state = data.get("state", FAILED)
            status.error = data.get("error") if status.state != CANCELED else None  # a cancel is no error
            self._log(f"{self.label(node_id)} {status.state}" + (f": {status.error}" if status.error else ""))
            if status.state == FAILED:
                self.last_error = f"{self.label(node_id)}: {status.error}"
        if thumb is not None:
            status.thumb = thumb
        if name is not None:
            status.image_name = name
        self._changed.add(node_id)

    def _finish_entry(self, entry: QueueEntry, event: Event, canceled: bool) -> None:
        entry.seconds = max(0.0, event.time - (entry.started or event.time))
        if entry.token is not None:
            self.invoker.unsubscribe(entry.token)
            entry.token = None
        session = self._session_of(entry.session_id)
        skipped = sum(1 for n in entry.graph.order if session is not None and session.node_state(n) == SKIPPED)
        if canceled:
            entry.state = CANCELED
            self._log(f"{entry.label}: session canceled")
        else:
            entry.state = FAILED if entry.failed else COMPLETED
            self._log(f"{entry.label}: session completed in {entry.seconds:.2f}s" + (f" ({len(entry.failed)} failed)" if entry.failed else ""))
        if self.is_running:
            return
        self.running_node = None
        if canceled:
            self.say("Canceled")
            for node_id, status in self.status.items():
                if status.state in (QUEUED, RUNNING):
                    self._set_state(node_id, IDLE)  # never started
            return
        parts = [f"{len(entry.failed)} node(s) failed"] if entry.failed else []
        parts += [f"{skipped} skipped"] if skipped else []
        self.say(f"Finished in {entry.seconds:.1f}s" + (", " + ", ".join(parts) if parts else ""), error=bool(entry.failed))
        if not entry.failed and not self.message_is_error:
            self.last_error = None

    def _session_of(self, session_id: str) -> Session | None:
        try:
            return self.invoker.get_session(session_id)
        except Exception:  # noqa: BLE001 - a session deleted meanwhile: no detail to show
            return None

    # --- gallery -----------------------------------------------------------------------------

    def _add_to_gallery(self, image_name: str, node_id: str | None, session_id: str) -> None:
        if any(item.image_name == image_name for item in self.gallery):
            return  # a cached node reports the image it made before
        self.gallery.insert(0, GalleryItem(image_name, node_id or "", session_id, time.time()))
        del self.gallery[GALLERY_MAX:]
        self.gallery_version += 1

    def image_path(self, image_name: str) -> Path | None:
        try:
            return Path(self.invoker.images.path(image_name))
        except (KeyError, OSError):
            return None

    def add_image_node(self, image_name: str, pos: Iterable[float]) -> str | None:
        """A gallery image dropped on the canvas: a load_image node reading its file."""
        path = self.image_path(image_name)
        if path is None:
            self.report_error(f"Image {image_name} is gone")
            return None
        return self.add_node("load_image", pos, {"path": str(path)})

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

    def import_file(self, path: str | Path) -> bool:
        """File -> Import: a ComfyUI / AUTOMATIC1111 / InvokeAI workflow or PNG as a new unsaved graph;
        `import_report` then holds what was mapped (the view shows it before anything runs)."""
        path = Path(path)
        try:
            with open(regular_file(path), "rb") as handle:
                data = handle.read(MAX_JSON_BYTES + 1)
            session, report = self.invoker.import_graph(data, str(path.resolve()))
        except (ImportFormatError, UntrustedInputError) as exc:
            self._refuse(f"Cannot import: {exc}" if str(path.name) in str(exc) else f"Cannot import {path}: {exc}")
            return False
        except OSError as exc:
            self._refuse(f"Cannot import {path}: {exc.strerror or exc}")
            return False
        self.import_report = report
        self._replace(session, None, f"Imported {path.name}: {len(report.imported)} of {report.total} {report.unit} "
                                     f"carried over" + (f", {len(report.missing_models)} model(s) missing"
                                                        if report.missing_models else ""))
        return True

    def drop_file(self, path: str | Path) -> bool:
        """A file dropped on the canvas: imported when another tool made it, else opened."""
        try:
            with open(regular_file(path), "rb") as handle:
                foreign = detect(handle.read(MAX_JSON_BYTES + 1), Path(path).name)
        except (OSError, ValueError):
            foreign = None  # open() says why
        return self.import_file(path) if foreign else self.open(path)

    def _replace(self, session: Session, path: Path | None, message: str) -> None:
        positions = session.ui.setdefault("positions", {})
        missing = [n for n in session.graph.order if n not in positions]
        if missing:
            positions.update(auto_layout(session.graph, missing))
        self._register(session)
        self.status.clear()
        self.sizes.clear()
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


def estimate_size(cls: type[BaseInvocation]) -> tuple[float, float]:
    """A node's drawn size before it is drawn (the view measures the real one): placement and
    layout use it so that nodes do not cover each other.  Image nodes reserve their thumbnail."""
    width, height = NODE_WIDTH, 34.0  # title bar
    for port in cls.inputs().values():
        kind = port.kind
        label = 7 * len(port.title) + 32  # the widget's label right of it, and the node's padding
        width = max(width, (WIDGET_WIDTH + 80 if kind == "prompt" else WIDGET_WIDTH) + label)
        if kind == "prompt":
            height += 72
        elif kind == "seed":
            height += 50
        else:
            height += 25
    height += 22 * len(cls.outputs()) + 26  # outputs and the state line
    if has_image_output(cls):
        height += THUMB + 8
    return width, height


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float = 0) -> bool:
    """Do two (x, y, w, h) rectangles overlap (closer than `gap`)?"""
    return a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap


def auto_layout(graph: Graph, node_ids: Iterable[str]) -> dict[str, list[float]]:
    """Columns by link depth (nodes are in topological order), stacked by their estimated height,
    each column as wide as its widest node: no node covers another."""
    depth: dict[str, int] = {}
    for node_id in graph.order:
        depth[node_id] = max((depth[l.from_node] + 1 for l in graph.links_in.get(node_id, ())), default=0)
    columns: dict[int, list[str]] = {}
    for node_id in node_ids:
        columns.setdefault(depth.get(node_id, 0), []).append(node_id)
    placed, x = {}, 20.0
    for column in sorted(columns):
        y, widest = 20.0, 0.0
        for node_id in columns[column]:
            w, h = estimate_size(graph.nodes[node_id].cls)
            placed[node_id] = [x, y]
            y += h + GAP
            widest = max(widest, w)
        x += widest + 2 * GAP
    return placed


class Viewport:
    """Zoom emulated on an editor that has none: a node at model position p is drawn at grid
    position p * zoom + offset (the editor's own pan comes on top).  Pure arithmetic, so the
    view and the tests share it."""

    LEVELS = (0.25, 0.35, 0.5, 0.65, 0.8, 1.0, 1.25, 1.5, 2.0)
    COLLAPSE_BELOW = 0.5  # smaller: nodes show only title and pins

    def __init__(self) -> None:
        self.zoom = 1.0
        self.offset = (0.0, 0.0)

    def to_grid(self, p: Iterable[float]) -> list[float]:
        x, y = p
        return [x * self.zoom + self.offset[0], y * self.zoom + self.offset[1]]

    def to_model(self, g: Iterable[float]) -> list[float]:
        x, y = g
        return [(x - self.offset[0]) / self.zoom, (y - self.offset[1]) / self.zoom]

    @property
    def collapsed(self) -> bool:
        return self.zoom < self.COLLAPSE_BELOW

    def step(self, steps: int, about: Iterable[float]) -> bool:
        """Zoom `steps` levels in (+) or out (-) keeping the grid point `about` (the cursor) still."""
        levels = self.LEVELS
        index = min(range(len(levels)), key=lambda i: abs(levels[i] - self.zoom))
        target = levels[max(0, min(len(levels) - 1, index + steps))]
        return self.set_zoom(target, about)

    def set_zoom(self, zoom: float, about: Iterable[float]) -> bool:
        if abs(zoom - self.zoom) < 1e-9:
            return False
        ax, ay = about
        mx, my = self.to_model((ax, ay))
        self.zoom = zoom
        self.offset = (ax - mx * zoom, ay - my * zoom)
        return True

    def fit(self, rects: list[tuple[float, float, float, float]], visible: tuple[float, float, float, float],
            margin: float = 40) -> None:
        """Zoom and offset so that every (x, y, w, h) model rectangle shows inside the visible grid
        rectangle (x0, y0, x1, y1), centred, no larger than 1:1."""
        if not rects:
            return
        x0 = min(r[0] for r in rects)
        y0 = min(r[1] for r in rects)
        x1 = max(r[0] + r[2] for r in rects)
        y1 = max(r[1] + r[3] for r in rects)
        vx0, vy0, vx1, vy1 = visible
        room_w, room_h = max(1.0, vx1 - vx0 - 2 * margin), max(1.0, vy1 - vy0 - 2 * margin)
        zoom = min(1.0, room_w / max(1.0, x1 - x0), room_h / max(1.0, y1 - y0))
        self.zoom = max([level for level in self.LEVELS if level <= zoom] or [self.LEVELS[0]])  # a level: it has a font
        cx, cy = (vx0 + vx1) / 2, (vy0 + vy1) / 2
        self.offset = (cx - (x0 + x1) / 2 * self.zoom, cy - (y0 + y1) / 2 * self.zoom)
