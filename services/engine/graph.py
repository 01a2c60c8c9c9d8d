"""The session graph: append-only nodes and links, validated as they are added.

Nodes are kept in the order they were added, which is always a topological order: a link runs
from an existing node to the node being added.  Editing means building a new graph (see
`Graph.edited`), which the session layer records as a fork.
"""
from __future__ import annotations

import enum
import heapq
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from pydantic import ValidationError

from nodes.base import RANDOM_SEED, REGISTRY, BaseInvocation, is_compatible, list_item_tag, random_seed


class GraphError(ValueError):
    """Bad graph input.  The message names the node and the field."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None, field: str | None = None):
        self.reason = message
        self.node_id = node_id
        self.node_type = node_type
        self.field = field
        where = []
        if node_id is not None or node_type is not None:
            label = f"node '{node_id}'" if node_id is not None else "node"
            where.append(f"{label} ({node_type})" if node_type else label)
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def to_dict(self) -> dict[str, Any]:
        return {"message": str(self), "reason": self.reason, "node_id": self.node_id,
                "node_type": self.node_type, "field": self.field}


def describe_validation_error(exc: ValidationError) -> tuple[str | None, str]:
    """(field, message) of the first error pydantic found."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    return (loc[0] if loc else None), err.get("msg", str(exc))


@dataclass(frozen=True, slots=True)
class Link:
    from_node: str
    from_field: str
    to_node: str
    to_field: str

    def to_dict(self) -> dict[str, str]:
        return {"from_node": self.from_node, "from_field": self.from_field,
                "to_node": self.to_node, "to_field": self.to_field}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Link":
        try:
            return cls(str(data["from_node"]), str(data["from_field"]), str(data["to_node"]), str(data["to_field"]))
        except (KeyError, TypeError) as exc:
            raise GraphError(f"a link needs from_node, from_field, to_node and to_field: {data!r}") from exc


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """A link given with a node being added.  `from_node` may be a history reference
    (-1 = the previously added node, -2, ...); `from_field` "*" links every output to the
    input of the same name and a compatible type."""

    from_node: str | int
    from_field: str
    to_field: str

    @classmethod
    def parse(cls, item: Any) -> "LinkRequest":
        if isinstance(item, LinkRequest):
            return item
        if isinstance(item, Link):
            return cls(item.from_node, item.from_field, item.to_field)
        if isinstance(item, Mapping):
            try:
                return cls(item["from_node"], item.get("from_field", "*"), item.get("to_field", item.get("from_field", "*")))
            except KeyError:
                raise GraphError(f"a link needs from_node: {dict(item)!r}") from None
        if isinstance(item, (tuple, list)) and len(item) in (2, 3):
            return cls(item[0], item[1], item[2] if len(item) == 3 else item[1])
        raise GraphError(f"cannot read link {item!r}: give (from_node, from_field, to_field)")


class GraphNode:
    __slots__ = ("id", "cls", "values", "out_tags", "_saved")

    def __init__(self, node_id: str, cls: type[BaseInvocation], values: dict[str, Any], out_tags: dict[str, str]):
        self.id = node_id
        self.cls = cls
        self.values = values  # JSON-able values of fields that were given (links fill the rest)
        self.out_tags = out_tags  # output tags narrowed by infer_output_tags
        self._saved: dict[str, Any] | None = None

    @property
    def type(self) -> str:
        return self.cls.node_type

    def to_dict(self) -> dict[str, Any]:
        # A node never changes once added, so its saved form is built once (sessions save often).
        if self._saved is None:
            self._saved = {"id": self.id, "type": self.cls.node_type, "version": self.cls.version, **self.values}
        return dict(self._saved)


def node_class(node_type: Any, node_id: str | None = None) -> type[BaseInvocation]:
    cls = REGISTRY.get(node_type) if isinstance(node_type, str) else None
    if cls is None:
        raise GraphError(f"unknown node type {node_type!r}", node_id=node_id)
    return cls


class Graph:
    """Nodes in the order added, and the links between them."""

    def __init__(self) -> None:
        self.nodes: dict[str, GraphNode] = {}
        self.links: list[Link] = []
        self.links_in: dict[str, list[Link]] = {}
        self.links_out: dict[str, list[Link]] = {}
        self._order: list[str] = []
        self._next_id = 1

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def order(self) -> Sequence[str]:
        return self._order

    def output_tag(self, node_id: str, field: str) -> str:
        node = self.nodes[node_id]
        return node.out_tags.get(field) or node.cls.outputs()[field].tag

    # --- adding ------------------------------------------------------------------------------

    def add_node(self, data: Mapping[str, Any] | BaseInvocation, links: Iterable[Any] = (), *, strict: bool = True) -> GraphNode:
        """Validate and append one node with the links into it.  Nothing changes on error.

        strict: a required input must have a value or a link (the canvas adds nodes first and
        links them afterwards, so it passes strict=False; running such a node then fails).
        """
        if isinstance(data, BaseInvocation):
            data = data.model_dump(exclude_unset=True) | {"type": data.node_type, "id": data.id}
        if not isinstance(data, Mapping):
            raise GraphError(f"a node must be an object with a 'type', not {type(data).__name__}")
        raw_id = data.get("id")
        node_id = str(raw_id) if raw_id not in (None, "") else self._fresh_id()
        cls = node_class(data.get("type"), node_id)
        if node_id in self.nodes:
            raise GraphError("a node with this id already exists", node_id, cls.node_type)
        if any(c in node_id for c in "/\\") or not node_id.isprintable() or len(node_id) > 128:
            raise GraphError("node ids may not hold path separators or control characters, nor be longer than 128",
                             node_id[:80], cls.node_type)
        if (number := _as_int(node_id)) is not None and number < 0:
            raise GraphError("node ids may not be negative numbers (those are history links)", node_id, cls.node_type)
        values = self._validate_values(node_id, cls, data)
        resolved = self._resolve_links(node_id, cls, values, links)
        ports = cls.inputs()
        for name, port in ports.items():
            linked = any(link.to_field == name for link in resolved)
            if port.kind == "seed" and not linked and values.get(name, RANDOM_SEED) == RANDOM_SEED:
                values[name] = random_seed()  # resolved now so that results reproduce
            elif strict and port.required and not linked and name not in values:
                raise GraphError("required input has neither a value nor a link", node_id, cls.node_type, name)
        in_tags = {link.to_field: self.output_tag(link.from_node, link.from_field) for link in resolved}
        node = GraphNode(node_id, cls, values, cls.infer_output_tags(in_tags))
        self.nodes[node_id] = node
        self._order.append(node_id)
        self.links.extend(resolved)
        self.links_in[node_id] = resolved
        self.links_out[node_id] = []
        for link in resolved:
            self.links_out[link.from_node].append(link)
        if (number := _as_int(node_id)) is not None and number >= 0:
            self._next_id = max(self._next_id, number + 1)
        return node

    def discard_last(self, node_id: str) -> None:
        """Take back the node just added (its write to disk failed), with the links into it.
        Only the last node can go: nothing links out of it yet."""
        if not self._order or self._order[-1] != node_id:
            raise GraphError("only the last node added can be taken back", node_id)
        self._order.pop()
        del self.nodes[node_id], self.links_out[node_id]
        for link in self.links_in.pop(node_id):
            self.links.remove(link)
            self.links_out[link.from_node].remove(link)

    def _fresh_id(self) -> str:
        while str(self._next_id) in self.nodes:
            self._next_id += 1
        return str(self._next_id)

    @staticmethod
    def _validate_values(node_id: str, cls: type[BaseInvocation], data: Mapping[str, Any]) -> dict[str, Any]:
        ports = cls.inputs()
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name in ("id", "type", "version"):
                continue
            if name not in ports:
                raise GraphError(f"unknown field (inputs are: {', '.join(ports) or 'none'})", node_id, cls.node_type, name)
            try:
                value = cls.validate_value(name, raw)
            except ValidationError as exc:
                raise GraphError(describe_validation_error(exc)[1], node_id, cls.node_type, name) from None
            values[name] = _jsonable(value)
        return values

    def _resolve_links(self, node_id: str, cls: type[BaseInvocation], values: dict[str, Any], requests: Iterable[Any]) -> list[Link]:
        ports = cls.inputs()
        explicit: list[Link] = []
        stars: list[str] = []
        for item in requests:
            req = LinkRequest.parse(item)
            source = self._resolve_source(req.from_node, node_id, cls)
            if req.from_field == "*":
                stars.append(source)
                continue
            explicit.append(Link(source, req.from_field, node_id, req.to_field))
        taken = {link.to_field for link in explicit}
        links = list(explicit)
        for source in stars:
            src = self.nodes[source]
            for name in src.cls.outputs():
                port = ports.get(name)
                if port is None or name in values or (name in taken and not port.collect):
                    continue
                if is_compatible(self.output_tag(source, name), port.tag):
                    links.append(Link(source, name, node_id, name))
                    taken.add(name)
        seen: dict[str, str] = {}
        for link in links:
            self._check_link(link, cls, seen)
        return links

    def _resolve_source(self, ref: str | int, node_id: str, cls: type[BaseInvocation]) -> str:
        text = str(ref)
        if (number := _as_int(text)) is not None and number < 0:
            back = -number
            if back > len(self._order):
                raise GraphError(f"history link {text} reaches before the first node", node_id, cls.node_type)
            return self._order[-back]
        if text not in self.nodes:
            raise GraphError(f"link from unknown node '{text}' (links run from existing nodes)", node_id, cls.node_type)
        return text

    def _check_link(self, link: Link, cls: type[BaseInvocation], seen: dict[str, str]) -> None:
        """`seen`: input -> the tag of the first link into it (a collect input gathers one type)."""
        src = self.nodes[link.from_node]
        if link.from_field not in src.cls.outputs():
            raise GraphError(
                f"link from node '{link.from_node}' ({src.type}): it has no output '{link.from_field}' "
                f"(outputs are: {', '.join(src.cls.outputs())})", link.to_node, cls.node_type, link.to_field)
        port = cls.inputs().get(link.to_field)
        if port is None:
            raise GraphError(f"link into unknown input (inputs are: {', '.join(cls.inputs())})",
                             link.to_node, cls.node_type, link.to_field)
        source_tag = self.output_tag(link.from_node, link.from_field)
        target_tag = "any" if port.collect else port.tag
        if not is_compatible(source_tag, target_tag):
            item = list_item_tag(target_tag)
            hint = " (gather single values into a list with a collect node)" if item and is_compatible(source_tag, item) else ""
            raise GraphError(f"cannot link {source_tag} output '{link.from_node}.{link.from_field}' into {_article(target_tag)} {target_tag} input{hint}",
                             link.to_node, cls.node_type, link.to_field)
        if link.to_field in seen and not port.collect:
            raise GraphError("input already has a link", link.to_node, cls.node_type, link.to_field)
        first = seen.setdefault(link.to_field, source_tag)
        if not (is_compatible(source_tag, first) or is_compatible(first, source_tag)):
            raise GraphError(f"cannot collect {source_tag} output '{link.from_node}.{link.from_field}' with the {first} "
                             "values already linked here (a collect gathers one type)", link.to_node, cls.node_type, link.to_field)

    # --- whole graphs ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [self.nodes[n].to_dict() for n in self._order], "links": [l.to_dict() for l in self.links]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = False) -> "Graph":
        """Build a graph from {"nodes": [...], "links": [...]} in any order.

        Nodes are added in a topological order (cycles are refused, naming their nodes); nodes
        saved by an older version of their class are migrated or refused with the reason.
        """
        if not isinstance(data, Mapping):
            raise GraphError("a graph must be an object with 'nodes' and 'links'")
        raw_nodes, raw_links = data.get("nodes", []), data.get("links", [])
        if isinstance(raw_nodes, Mapping):  # {"id": {...}} form
            raw_nodes = [{"id": k, **v} if isinstance(v, Mapping) else v for k, v in raw_nodes.items()]
        if not isinstance(raw_nodes, list) or not isinstance(raw_links, list):
            raise GraphError("'nodes' and 'links' must be lists")
        nodes: dict[str, dict[str, Any]] = {}
        for index, item in enumerate(raw_nodes):
            if not isinstance(item, Mapping) or "id" not in item:
                raise GraphError(f"node #{index} must be an object with an 'id' and a 'type'")
            node_id = str(item["id"])
            if node_id in nodes:
                raise GraphError("a node with this id already exists", node_id)
            nodes[node_id] = _migrated(node_id, dict(item))
        links = [Link.from_dict(item) if isinstance(item, Mapping) else _bad_link(item) for item in raw_links]
        incoming: dict[str, list[Link]] = {n: [] for n in nodes}
        for link in links:
            for end in (link.from_node, link.to_node):
                if end not in nodes:
                    raise GraphError(f"link {link.from_node}.{link.from_field} -> {link.to_node}.{link.to_field} names an unknown node '{end}'")
            incoming[link.to_node].append(link)
        graph = cls()
        for node_id in _topological_order(nodes, links):
            graph.add_node(nodes[node_id], [(l.from_node, l.from_field, l.to_field) for l in incoming[node_id]], strict=strict)
        return graph

    def copy(self) -> "Graph":
        return Graph.from_dict(self.to_dict())

    def edited(self, *, set_value: tuple[str, str, Any] | None = None, delete_node: str | None = None,
               delete_link: Link | None = None, add_link: Link | None = None, strict: bool = False) -> "Graph":
        """A new graph with one change; this graph stays as it is."""
        data = self.to_dict()
        if set_value is not None:
            node_id, field, value = set_value
            node = self._node_or_error(node_id)
            if field not in node.cls.inputs():
                raise GraphError("unknown field", node_id, node.type, field)
            for item in data["nodes"]:
                if item["id"] == node_id:
                    if value is None:
                        item.pop(field, None)
                    else:
                        item[field] = value
        if delete_node is not None:
            self._node_or_error(delete_node)
            data["nodes"] = [n for n in data["nodes"] if n["id"] != delete_node]
            data["links"] = [l for l in data["links"] if delete_node not in (l["from_node"], l["to_node"])]
        if delete_link is not None:
            if delete_link not in self.links:
                raise GraphError(f"no such link {delete_link.from_node}.{delete_link.from_field} -> "
                                 f"{delete_link.to_node}.{delete_link.to_field}", delete_link.to_node)
            data["links"] = [l for l in data["links"] if Link.from_dict(l) != delete_link]
        if add_link is not None:
            for end in (add_link.from_node, add_link.to_node):
                self._node_or_error(end)
            data["links"].append(add_link.to_dict())
        return Graph.from_dict(data, strict=strict)

    def _node_or_error(self, node_id: str) -> GraphNode:
        node = self.nodes.get(node_id)
        if node is None:
            raise GraphError("no such node", node_id)
        return node

    def descendants(self, node_id: str) -> set[str]:
        found: set[str] = set()
        stack = [node_id]
        while stack:
            for link in self.links_out.get(stack.pop(), ()):
                if link.to_node not in found:
                    found.add(link.to_node)
                    stack.append(link.to_node)
        return found


def _as_int(text: str) -> int | None:
    """The integer an id spells in ASCII digits (at most 18), else None: str.isdigit() also takes
    '¹' and int() refuses it, and int() refuses very long digit strings."""
    return int(text) if _INT_ID.fullmatch(text) else None


_INT_ID = re.compile(r"-?[0-9]{1,18}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _bad_link(item: Any) -> Link:
    raise GraphError(f"a link must be an object, not {item!r}")


def _migrated(node_id: str, item: dict[str, Any]) -> dict[str, Any]:
    cls = node_class(item.get("type"), node_id)
    saved = item.pop("version", None)
    if saved is None or str(saved) == cls.version:
        return item
    if _version_tuple(str(saved)) > _version_tuple(cls.version):
        raise GraphError(f"saved by a newer version {saved} of this node (installed: {cls.version}); update invoke-nodes",
                         node_id, cls.node_type)
    try:
        values = cls.migrate({k: v for k, v in item.items() if k not in ("id", "type")}, str(saved))
    except ValueError as exc:
        raise GraphError(str(exc), node_id, cls.node_type) from None
    return {"id": node_id, "type": cls.node_type, **values}


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def _topological_order(nodes: Mapping[str, Any], links: list[Link]) -> list[str]:
    """Kahn's algorithm, keeping the given order among ready nodes; refuses cycles."""
    pending = {n: 0 for n in nodes}
    out: dict[str, list[str]] = {n: [] for n in nodes}
    for link in links:
        pending[link.to_node] += 1
        out[link.from_node].append(link.to_node)
    position = {n: i for i, n in enumerate(nodes)}
    ready = [(position[n], n) for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node_id = heapq.heappop(ready)
        order.append(node_id)
        for target in out[node_id]:
            pending[target] -= 1
            if pending[target] == 0:
                heapq.heappush(ready, (position[target], target))
    if len(order) != len(nodes):
        cycle = sorted(n for n, c in pending.items() if c > 0)
        raise GraphError(f"links form a cycle through nodes {', '.join(cycle)}", cycle[0])
    return order


def _article(word: str) -> str:
    """"a" or "an" before a type name ("an int input", "a float input")."""
    return "an" if word[:1].lower() in "aeiou" else "a"
