"""Sessions: a graph, its execution results and history, and the lineage of forks.

Saved as versioned JSON: `graph`, `results` (values, errors), `history`, `parent_id`, and a `ui`
block (node positions) that may change freely without forking.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from nodes.core.untrusted import UntrustedInputError, load_json

from services.engine.graph import Graph, GraphError, GraphNode, Link

SESSION_FORMAT = "invoke-nodes/session"
SESSION_SCHEMA_VERSION = 1

# Node states.  PENDING: not run yet; the others are final for one run.  STALE: it ran, but the
# images/objects its result names are gone (or an input node is stale), so the next run redoes it.
PENDING, QUEUED, RUNNING = "pending", "queued", "running"
COMPLETED, CACHED, FAILED, SKIPPED, CANCELED = "completed", "cached", "failed", "skipped", "canceled"
STALE = "stale"
DONE_STATES = frozenset({COMPLETED, CACHED})


def is_valid_session_id(session_id: str) -> bool:
    """Session ids name files in the session store: letters, digits, '-' and '_' only."""
    return bool(session_id) and len(session_id) <= 128 and session_id.isascii() and all(c.isalnum() or c in "-_" for c in session_id)


class SessionFormatError(ValueError):
    """A session file or document that cannot be read: corrupt, foreign, or from a newer version."""


@dataclass(slots=True)
class NodeResult:
    """The result of one execution of a node (one per fan-out item when an iterate is upstream)."""

    node_id: str
    state: str
    index: tuple[tuple[str, int], ...] = ()  # (fan-out node id, item index) pairs, sorted
    outputs: dict[str, Any] | None = None
    error: str | None = None
    cache_key: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"node_id": self.node_id, "state": self.state}
        if self.index:
            data["index"] = [list(pair) for pair in self.index]
        if self.outputs is not None:
            data["outputs"] = self.outputs
        if self.error is not None:
            data["error"] = self.error
        if self.cache_key is not None:
            data["cache_key"] = self.cache_key
        if self.seconds:
            data["seconds"] = round(self.seconds, 6)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NodeResult":
        index = tuple((str(k), int(i)) for k, i in data.get("index", ()))
        outputs = data.get("outputs")
        if outputs is not None and not isinstance(outputs, dict):
            raise TypeError("outputs must be an object")
        return cls(str(data["node_id"]), str(data["state"]), index, outputs, data.get("error"),
                   data.get("cache_key"), float(data.get("seconds", 0.0)))


class Session:
    """One graph and what happened when it ran.  Nodes are only ever appended; any other edit
    is a fork: a new session with the change, pointing at this one as its parent."""

    def __init__(self, graph: Graph | None = None, *, session_id: str | None = None, parent_id: str | None = None,
                 change: str | None = None, ui: dict[str, Any] | None = None, created: float | None = None):
        self.id = session_id or uuid.uuid4().hex
        self.parent_id = parent_id
        self.change = change
        self.created = created if created is not None else time.time()
        self.graph = graph if graph is not None else Graph()
        self.results: dict[str, list[NodeResult]] = {}
        self.history: list[str] = []  # node ids in the order they finished
        self.ui: dict[str, Any] = ui if ui is not None else {}
        self.lock = threading.RLock()

    # --- building ----------------------------------------------------------------------------

    def add_node(self, data: Mapping[str, Any] | Any, links: Iterable[Any] = (), *, strict: bool = True) -> GraphNode:
        with self.lock:
            return self.graph.add_node(data, links, strict=strict)

    def fork(self, change: str, **edit: Any) -> "Session":
        """A new session whose graph has one edit (see Graph.edited); results start empty and
        the output cache makes unchanged nodes free when it runs."""
        with self.lock:
            graph = self.graph.edited(**edit)
            ui = json.loads(json.dumps(self.ui))
        if edit.get("delete_node") is not None:
            ui.get("positions", {}).pop(edit["delete_node"], None)
        return Session(graph, parent_id=self.id, change=change, ui=ui)

    def set_value(self, node_id: str, field: str, value: Any) -> "Session":
        return self.fork(f"set {node_id}.{field}", set_value=(node_id, field, value))

    def delete_node(self, node_id: str) -> "Session":
        return self.fork(f"delete node {node_id}", delete_node=node_id)

    def delete_link(self, link: Link) -> "Session":
        return self.fork(f"delete link {link.from_node}.{link.from_field}->{link.to_node}.{link.to_field}", delete_link=link)

    def add_link(self, link: Link) -> "Session":
        return self.fork(f"link {link.from_node}.{link.from_field}->{link.to_node}.{link.to_field}", add_link=link)

    def clone(self) -> "Session":
        """An identical session (graph, results, ui) under a new id, recorded as a child."""
        copy = Session.from_dict(self.to_dict())
        copy.id, copy.parent_id, copy.change, copy.created = uuid.uuid4().hex, self.id, "clone", time.time()
        return copy

    # --- state -------------------------------------------------------------------------------

    def node_state(self, node_id: str) -> str:
        rows = self.results.get(node_id)
        if rows is None:
            return PENDING
        if not rows:  # ran zero times (an empty fan-out upstream, or it fanned out into nothing)
            return COMPLETED
        if len(rows) == 1:
            return rows[0].state
        states = {r.state for r in rows}
        for state in (RUNNING, FAILED, CANCELED, SKIPPED, QUEUED, STALE):
            if state in states:
                return state
        return CACHED if states == {CACHED} else COMPLETED

    def is_complete(self) -> bool:
        return all(self.node_state(n) in DONE_STATES for n in self.graph.order)

    def outputs(self, node_id: str) -> list[dict[str, Any]]:
        return [r.outputs for r in self.results.get(node_id, ()) if r.outputs is not None]

    def errors(self) -> dict[str, str]:
        return {n: r.error for n, rows in self.results.items() for r in rows if r.error}

    # --- JSON --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "format": SESSION_FORMAT,
                "schema_version": SESSION_SCHEMA_VERSION,
                "id": self.id,
                "parent_id": self.parent_id,
                "change": self.change,
                "created": self.created,
                "graph": self.graph.to_dict(),
                "results": {n: [r.to_dict() for r in rows] for n, rows in self.results.items()},
                "history": list(self.history),
                "ui": self.ui,
            }

    def to_json(self, indent: int | None = None) -> str:
        # indent=None keeps json's C encoder: a 10,000-node session saves in a fraction of the time
        return json.dumps(self.to_dict(), indent=indent, separators=(",", ":") if indent is None else None)

    @classmethod
    def from_dict(cls, data: Any) -> "Session":
        """Read a saved session.  Raises SessionFormatError or GraphError, never anything else."""
        if not isinstance(data, Mapping):
            raise SessionFormatError("a session must be a JSON object")
        if data.get("format") != SESSION_FORMAT:
            raise SessionFormatError(f"not an invoke-nodes session (format is {data.get('format')!r})")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise SessionFormatError(f"schema_version must be an integer, not {version!r}")
        if version > SESSION_SCHEMA_VERSION:
            raise SessionFormatError(f"saved by a newer invoke-nodes (schema {version}, this one reads {SESSION_SCHEMA_VERSION})")
        if version < 1:
            raise SessionFormatError(f"unknown schema_version {version}")
        session_id = _opt_str(data.get("id"))
        if session_id and not is_valid_session_id(session_id):
            raise SessionFormatError(f"session id {session_id[:80]!r} may only hold letters, digits, '-' and '_'")
        try:
            session = cls(Graph.from_dict(data.get("graph", {})), session_id=session_id or None,
                          parent_id=_opt_str(data.get("parent_id")), change=_opt_str(data.get("change")),
                          ui=dict(data.get("ui") or {}), created=float(data.get("created") or time.time()))
            for node_id, rows in dict(data.get("results") or {}).items():
                if node_id not in session.graph.nodes:
                    raise SessionFormatError(f"results name unknown node '{node_id}'")
                session.results[str(node_id)] = [NodeResult.from_dict(r) for r in rows]
            session.history = [str(n) for n in data.get("history") or []]
        except (GraphError, SessionFormatError):
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise SessionFormatError(f"malformed session: {type(exc).__name__}: {exc}") from None
        return session

    @classmethod
    def from_json(cls, text: str | bytes) -> "Session":
        try:
            data = load_json(text)
        except UntrustedInputError as exc:
            raise SessionFormatError(str(exc)) from None
        return cls.from_dict(data)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise SessionFormatError(f"expected a string, got {value!r}")
    return str(value)
