"""Fuzzing session loading: any input gives a session or the project's own validation error."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.discovery import load_builtin_nodes
from services.engine.graph import GraphError
from services.engine.session import Session, SessionFormatError

load_builtin_nodes()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
node_types = st.sampled_from(["integer", "math", "resize", "noise_image", "collect", "iterate", "string", "nope"])
fields = st.sampled_from(["value", "a", "b", "width", "image", "item", "collection", "seed", "zzz", "id", "version"])


@st.composite
def plausible_sessions(draw):
    """Documents shaped like sessions, with random damage."""
    count = draw(st.integers(0, 5))
    nodes = []
    for i in range(count):
        node = {"id": draw(st.sampled_from([str(i + 1), str(i), "x", i + 1])), "type": draw(node_types)}
        for _ in range(draw(st.integers(0, 3))):
            node[draw(fields)] = draw(json_values)
        nodes.append(node)
    links = [
        {k: draw(st.sampled_from([str(draw(st.integers(0, count + 1))), draw(fields), draw(json_values)]))
         for k in ("from_node", "from_field", "to_node", "to_field")}
        for _ in range(draw(st.integers(0, 3)))
    ]
    doc = {"format": "invoke-nodes/session", "schema_version": draw(st.sampled_from([1, 1, 1, 2, 0, "1"])),
           "id": draw(st.sampled_from(["abc", None, 5])), "graph": {"nodes": nodes, "links": links},
           "results": draw(st.sampled_from([{}, {"1": [{"node_id": "1", "state": "completed", "outputs": {"value": 1}}]},
                                            {"1": [{"state": 3}]}, {"1": "x"}, []])),
           "ui": draw(st.sampled_from([{}, {"positions": {"1": [0, 0]}}, [], None]))}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(json_values)
    return doc


def _load(text):
    try:
        session = Session.from_json(text)
    except (SessionFormatError, GraphError):
        return None
    assert Session.from_json(session.to_json()).to_dict() == session.to_dict()
    return session


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible_sessions())
def test_plausible_but_damaged_sessions(doc):
    _load(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_arbitrary_json(doc):
    _load(json.dumps(doc))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data):
    _load(data)


link_refs = st.one_of(st.integers(-4, -1), st.sampled_from(["1", "2", "3", "x"]))
link_fields = st.sampled_from(["*", "value", "image", "collection", "item", "width", "a", "b", "nope"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(node_types, st.dictionaries(fields, json_values, max_size=2),
                          st.lists(st.tuples(link_refs, link_fields, link_fields), max_size=2)), max_size=6))
def test_appending_random_nodes_keeps_the_graph_valid(steps):
    from services.engine.graph import Graph

    graph = Graph()
    for node_type, values, links in steps:
        before = graph.to_dict()
        try:
            graph.add_node({"type": node_type, **{k: v for k, v in values.items() if k not in ("id", "version")}}, links, strict=False)
        except GraphError:
            assert graph.to_dict() == before, "a refused node changes nothing"
    position = {node_id: i for i, node_id in enumerate(graph.order)}
    assert all(position[l.from_node] < position[l.to_node] for l in graph.links), "links run from earlier nodes"
    assert Graph.from_dict(graph.to_dict()).to_dict() == graph.to_dict()
