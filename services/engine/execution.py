"""Running a session's graph: one pass in node order (which is topological), each node once per
combination of upstream fan-out items, with the output cache in front of `invoke`.

Generic mechanisms rather than special node names:
- a node with `fans_out = True` returns a list; every downstream node runs once per item
  (results carry an index of (fan-out node id, item) pairs; rows of different sources are
  joined where their indices agree);
- an input declared with `collect=True` takes any number of links and receives the outputs
  of every linked row as one list (so a collect node closes the fan-out).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from nodes.base import STORED_TAGS, BaseInvocation, CanceledError, NodeInputError, is_compatible

from services.engine.cache import cache_key
from services.logfile import failure_line
from services.container import Services
from services.engine.events import NODE_COMPLETED, NODE_FAILED, NODE_PROGRESS, NODE_STARTED, SESSION_CANCELED, SESSION_COMPLETED, Event
from services.executors.base import NodeCall, NodeFailedError
from services.engine.graph import GraphNode, describe_validation_error
from services.engine.session import (CACHED, CANCELED, COMPLETED, DONE_STATES, FAILED, RUNNING, SKIPPED, STALE, NodeResult,
                                     Session)

log = logging.getLogger(__name__)

Index = tuple[tuple[str, int], ...]


@functools.cache
def _reference_outputs(cls: type[BaseInvocation]) -> dict[str, str]:
    """Outputs that name stored images/objects: a cached value is only good while they exist."""
    return {name: port.tag for name, port in cls.outputs().items() if port.tag in STORED_TAGS}


def outputs_alive(services: Services, cls: type[BaseInvocation], outputs: dict[str, Any]) -> bool:
    tags = _reference_outputs(cls)
    return not tags or services.outputs_alive(tags, outputs)


def mark_stale(services: Services, session: Session, *, reopened: bool = False) -> list[str]:
    """The one rule for results whose outputs are gone, as the output cache has it for its entries:
    a finished node whose images/objects no longer exist is STALE, and so is every node after it
    (its inputs change when the stale one is recomputed); a run redoes them.  `reopened`: the
    results were read back from a file or the store, not computed here, so the live ones are
    CACHED.  Returns the stale nodes."""
    graph = session.graph
    stale: dict[str, None] = {}  # ordered, and fast to look up in a large graph
    with session.lock:
        for node_id in graph.order:
            rows = session.results.get(node_id)
            state = session.node_state(node_id) if rows else None
            if state not in DONE_STATES:
                if state == STALE:
                    stale[node_id] = None
                continue
            cls = graph.nodes[node_id].cls
            if any(link.from_node in stale for link in graph.links_in[node_id]) or \
                    not all(outputs_alive(services, cls, row.outputs or {}) for row in rows):
                stale[node_id] = None
                new_state = STALE
            elif reopened:
                new_state = CACHED
            else:
                continue
            for row in rows:
                row.state = new_state
    return list(stale)


class SessionRun:
    """One job on one session: run every ready node (run_all) or only the next one."""

    def __init__(self, services: Services, session: Session, cancel: threading.Event) -> None:
        self.services = services
        self.session = session
        self.cancel = cancel
        self.events = services.events

    def listening(self) -> bool:
        return self.events.wants(self.session.id)

    def emit(self, kind: str, node_id: str | None = None, **data: Any) -> None:
        if self.listening():
            self.events.emit(Event(kind, self.session.id, node_id, data))

    def run(self, run_all: bool = True, only: frozenset[str] | None = None) -> bool:
        """Returns False when canceled.  `only`: run just these nodes (the others are left as they are)."""
        session, graph = self.session, self.session.graph
        mark_stale(self.services, session)  # images deleted since the last run: redo what made them
        position = 0
        ran_any = False
        while position < len(graph.order):  # the graph may grow while it runs
            node_id = graph.order[position]
            position += 1
            if session.node_state(node_id) in DONE_STATES or (only is not None and node_id not in only):
                continue
            if self.cancel.is_set():
                break
            if not run_all and ran_any:
                break
            ran_any = True
            blocked = self._blocked_by(node_id)
            if blocked is not None:
                self._finish(node_id, [NodeResult(node_id, SKIPPED, error=blocked)])
                continue
            if not self._run_node(graph.nodes[node_id]):
                break
        canceled = self.cancel.is_set()
        if canceled:
            self.emit(SESSION_CANCELED)
        elif run_all or only is not None or session.is_complete():
            self.emit(SESSION_COMPLETED, errors=session.errors(), complete=session.is_complete())
        return not canceled

    def _blocked_by(self, node_id: str) -> str | None:
        for link in self.session.graph.links_in[node_id]:
            state = self.session.node_state(link.from_node)
            if state not in DONE_STATES:
                source = self.session.graph.nodes[link.from_node]
                return f"skipped: input node '{source.id}' ({source.type}) {state}"
        return None

    def _finish(self, node_id: str, rows: list[NodeResult]) -> None:
        with self.session.lock:
            self.session.results[node_id] = rows
            self.session.history.append(node_id)
        if not self.listening():  # skip building event data nobody reads (hot path)
            return
        for row in rows:
            if row.state in DONE_STATES:
                self.emit(NODE_COMPLETED, node_id, state=row.state, outputs=row.outputs, index=row.index)
            else:
                self.emit(NODE_FAILED, node_id, state=row.state, error=row.error, index=row.index)

    # --- one node ----------------------------------------------------------------------------

    def _run_node(self, node: GraphNode) -> bool:
        """Run every instance of a node; returns False when canceled."""
        with self.session.lock:
            self.session.results[node.id] = [NodeResult(node.id, RUNNING)]
        try:
            rows = self._run_instances(node)
        except Exception as exc:  # a fault of the engine, not of the node: the node fails, the run goes on
            rows = [NodeResult(node.id, FAILED, error=self._unexpected(node, exc))]
        self._finish(node.id, rows)
        return not any(r.state == CANCELED for r in rows)

    def _run_instances(self, node: GraphNode) -> list[NodeResult]:
        instances = self._instances(node)
        rows: list[NodeResult] = []
        if node.cls.runs_in_worker and len(instances) > 1 and (parallel := self.services.executor.parallelism) > 1:
            # Fan-out items of a worker node go to the cluster's workers side by side.
            with ThreadPoolExecutor(min(parallel, len(instances)), thread_name_prefix=f"fan-out-{node.id}") as pool:
                done = pool.map(lambda instance: self._run_instance(node, *instance), instances)
                for instance_rows in done:
                    rows.extend(instance_rows)
            canceled = next((i for i, row in enumerate(rows) if row.state == CANCELED), None)
            if canceled is not None:
                del rows[canceled + 1:]
        else:
            for index, linked in instances:
                if self.cancel.is_set():
                    rows.append(NodeResult(node.id, CANCELED, index, error="canceled"))
                    break
                produced = self._run_instance(node, index, linked)
                rows.extend(produced)
                if produced and produced[-1].state == CANCELED:
                    break
        return rows

    def _run_instance(self, node: GraphNode, index: Index, linked: dict[str, Any]) -> list[NodeResult]:
        cls = node.cls
        values = {**node.values, **linked}
        started = time.perf_counter()
        if node.id in self.session.ui.get("bypass", ()):
            return [NodeResult(node.id, COMPLETED, index, self._passed_through(node, linked), seconds=0.0)]
        try:
            invocation = cls.model_validate(values | {"id": node.id})
        except ValidationError as exc:
            field, message = describe_validation_error(exc)
            if exc.errors()[0].get("type") == "missing":
                message = "required input has neither a value nor a link"
            return [NodeResult(node.id, FAILED, index, error=f"node '{node.id}' ({cls.node_type}), field '{field}': {message}")]
        key = None
        if cls.cacheable:
            key = cache_key(cls.node_type, cls.version, values, invocation.cache_salt())
            cached = self.services.cache.get(key)
            if cached is not None and all(outputs_alive(self.services, cls, out) for out in cached):
                return [NodeResult(node.id, CACHED, self._item_index(node, index, i), out, cache_key=key)
                        for i, out in enumerate(cached)]
        if self.listening():
            self.emit(NODE_STARTED, node.id, index=index)
        call = NodeCall(invocation, self.session.id, node.id, index, self._embedded_graph)
        try:
            outputs = self.services.executor.execute(call, functools.partial(self._progress, node.id, index), self.cancel)
        except CanceledError:
            return [NodeResult(node.id, CANCELED, index, error="canceled", seconds=time.perf_counter() - started)]
        except NodeInputError as exc:
            return [NodeResult(node.id, FAILED, index, error=f"node '{node.id}' ({cls.node_type}), field '{exc.field}': {exc}",
                               seconds=time.perf_counter() - started)]
        except NodeFailedError as exc:  # the message already names the node and says what happened
            return [NodeResult(node.id, FAILED, index, error=str(exc), seconds=time.perf_counter() - started)]
        except Exception as exc:  # a failing node marks itself failed; the worker goes on
            return [NodeResult(node.id, FAILED, index, error=self._unexpected(node, exc),
                               seconds=time.perf_counter() - started)]
        seconds = time.perf_counter() - started
        if key is not None:
            self.services.cache.put(key, outputs)
        return [NodeResult(node.id, COMPLETED, self._item_index(node, index, i), out, cache_key=key, seconds=seconds)
                for i, out in enumerate(outputs)]

    def _unexpected(self, node: GraphNode, exc: Exception) -> str:
        log.warning("node %s (%s) failed", node.id, node.type, exc_info=exc)
        return failure_line(node.id, node.type, exc, self.services.settings.data_dir)

    @staticmethod
    def _passed_through(node: GraphNode, linked: dict[str, Any]) -> dict[str, Any]:
        """A bypassed node's outputs: each takes the first linked input of a compatible type
        (an image node hands its input image on); an output with none is None."""
        inputs = node.cls.inputs()
        outputs: dict[str, Any] = {}
        for name, port in node.cls.outputs().items():
            outputs[name] = next((value for field, value in linked.items()
                                  if field in inputs and is_compatible(inputs[field].tag, port.tag)), None)
        return outputs

    def _embedded_graph(self) -> dict[str, Any]:
        """The graph images carry in their PNG, with the node positions (reopening it keeps the layout)."""
        data = self.session.graph.to_dict()
        positions = self.session.ui.get("positions")
        if positions:
            data["ui"] = {"positions": positions}
        return data

    @staticmethod
    def _item_index(node: GraphNode, index: Index, item: int) -> Index:
        if not node.cls.fans_out:
            return index
        return tuple(sorted((*index, (node.id, item))))

    def _progress(self, node_id: str, index: Index, step: int, total: int, message: str, preview: Any) -> None:
        if self.listening():
            data: dict[str, Any] = {"step": step, "total": total, "message": message, "index": index}
            if preview is not None:
                data["preview"] = preview
            self.events.emit(Event(NODE_PROGRESS, self.session.id, node_id, data))

    def _instances(self, node: GraphNode) -> list[tuple[Index, dict[str, Any]]]:
        """Every combination of upstream rows whose fan-out indices agree, with the linked values."""
        results = self.session.results
        links = self.session.graph.links_in[node.id]
        if not links:
            return [((), {})]
        ports = node.cls.inputs()
        collected: dict[str, list[Any]] = {}
        by_source: dict[str, list[tuple[str, str]]] = {}
        for link in links:
            if ports[link.to_field].collect:
                bucket = collected.setdefault(link.to_field, [])
                bucket.extend(row.outputs[link.from_field] for row in results[link.from_node])
            else:
                by_source.setdefault(link.from_node, []).append((link.from_field, link.to_field))
        plain = dict(collected)
        joined_sources = []
        for source, fields in by_source.items():
            rows = results[source]
            if len(rows) == 1 and not rows[0].index:  # the common case: no fan-out upstream
                outputs = rows[0].outputs or {}
                for from_field, to_field in fields:
                    plain[to_field] = outputs[from_field]
            else:
                joined_sources.append((rows, fields))
        combos: list[tuple[dict[str, int], dict[str, Any]]] = [({}, plain)]
        for rows, fields in joined_sources:
            joined = []
            for index, values in combos:
                for row in rows:
                    if any(index.get(k, i) != i for k, i in row.index):
                        continue
                    merged = dict(values)
                    outputs = row.outputs or {}
                    for from_field, to_field in fields:
                        merged[to_field] = outputs[from_field]
                    joined.append(({**index, **dict(row.index)} if row.index else index, merged))
            combos = joined
        return [(tuple(sorted(index.items())) if index else (), values) for index, values in combos]
