"""Graph building and validation at add time."""
from __future__ import annotations

import pytest

from nodes.base import SEED_MAX
from nodes.discovery import load_builtin_nodes
from services.engine.graph import Graph, GraphError, Link

load_builtin_nodes()


def test_history_links_resolve_to_earlier_nodes():
    graph = Graph()
    graph.add_node({"type": "integer", "value": 2})
    graph.add_node({"type": "integer", "value": 3})
    graph.add_node({"type": "math"}, [(-2, "value", "a"), (-1, "value", "b")])
    assert graph.links_in["3"] == [Link("1", "value", "3", "a"), Link("2", "value", "3", "b")]


def test_star_links_every_output_to_the_input_of_the_same_name_and_type():
    graph = Graph()
    graph.add_node({"type": "noise_image", "width": 32, "height": 32})
    graph.add_node({"type": "resize"}, [(-1, "*", "*")])
    # noise_image outputs image, width, height: all three match resize's inputs by name and type
    assert {(l.from_field, l.to_field) for l in graph.links_in["2"]} == {("image", "image"), ("width", "width"), ("height", "height")}


def test_star_skips_inputs_given_a_value():
    graph = Graph()
    graph.add_node({"type": "noise_image"})
    graph.add_node({"type": "resize", "width": 7}, [(-1, "*", "*")])
    assert {l.to_field for l in graph.links_in["2"]} == {"image", "height"}


def test_int_output_feeds_a_float_input():
    graph = Graph()
    graph.add_node({"type": "integer", "value": 2})
    graph.add_node({"type": "float_math"}, [(-1, "value", "a")])
    assert graph.links_in["2"][0].to_field == "a"


@pytest.mark.parametrize(
    "data, links, node, field, words",
    [
        ({"type": "nope"}, [], "2", None, "unknown node type 'nope'"),
        ({"type": "resize", "colour": 1}, [(-1, "image", "image")], "2", "colour", "unknown field"),
        ({"type": "resize", "width": 0}, [(-1, "image", "image")], "2", "width", "greater than or equal to 1"),
        ({"type": "resize", "width": "wide"}, [(-1, "image", "image")], "2", "width", "valid integer"),
        ({"type": "resize"}, [], "2", "image", "neither a value nor a link"),
        ({"type": "resize"}, [(-1, "width", "image")], "2", "image", "cannot link int output"),
        ({"type": "resize"}, [(-1, "image", "image"), (-1, "image", "image")], "2", "image", "already has a link"),
        ({"type": "resize"}, [(-1, "pixels", "image")], "2", "image", "has no output 'pixels'"),
        ({"type": "resize"}, [(-1, "image", "picture")], "2", "picture", "unknown input"),
        ({"type": "resize"}, [(-5, "image", "image")], "2", None, "before the first node"),
        ({"type": "resize"}, [("99", "image", "image")], "2", None, "unknown node '99'"),
        ({"type": "resize", "id": "1"}, [], "1", None, "already exists"),
    ],
)
def test_validation_errors_name_node_and_field(data, links, node, field, words):
    graph = Graph()
    graph.add_node({"type": "noise_image"})
    with pytest.raises(GraphError) as caught:
        graph.add_node(data, links)
    error = caught.value
    assert words in str(error)
    assert error.node_id == node
    assert error.field == field
    assert len(graph) == 1 and len(graph.links) == 0, "a refused node leaves the graph as it was"


def test_single_value_into_list_input_needs_collect():
    graph = Graph()
    graph.add_node({"type": "integer"})
    with pytest.raises(GraphError, match="collect node"):
        graph.add_node({"type": "iterate"}, [(-1, "value", "collection")])


def test_collect_takes_many_links_and_types_its_output():
    graph = Graph()
    graph.add_node({"type": "noise_image"})
    graph.add_node({"type": "solid_color"})
    graph.add_node({"type": "collect"}, [(-2, "image", "item"), (-1, "image", "item")])
    assert graph.output_tag("3", "collection") == "list[image]"
    graph.add_node({"type": "iterate"}, [(-1, "collection", "collection")])
    assert graph.output_tag("4", "item") == "image"
    graph.add_node({"type": "resize"}, [(-1, "item", "image")])  # iterate's item is typed, so it links to an image input


def test_random_seeds_are_fixed_when_added():
    graph = Graph()
    node = graph.add_node({"type": "noise_image"})
    explicit = graph.add_node({"type": "noise_image", "seed": 42})
    assert 0 <= node.values["seed"] <= SEED_MAX
    assert explicit.values["seed"] == 42
    again = Graph.from_dict(graph.to_dict())
    assert again.nodes["1"].values["seed"] == node.values["seed"]


def test_cycles_are_refused_naming_the_nodes():
    graph = Graph()
    graph.add_node({"type": "integer"})
    graph.add_node({"type": "math"}, [(-1, "value", "a")])
    graph.add_node({"type": "math"}, [(-1, "value", "a")])
    with pytest.raises(GraphError, match="cycle through nodes 2, 3"):
        graph.edited(add_link=Link("3", "value", "2", "b"))


def test_added_link_between_existing_nodes_reorders_topologically():
    graph = Graph()
    graph.add_node({"type": "math", "id": "sum"}, strict=False)
    graph.add_node({"type": "integer", "id": "five", "value": 5})
    edited = graph.edited(add_link=Link("five", "value", "sum", "a"))
    assert list(edited.order) == ["five", "sum"]
    assert list(graph.order) == ["sum", "five"], "the original graph is unchanged"


def test_strict_false_allows_missing_required_inputs():
    graph = Graph()
    graph.add_node({"type": "resize"}, strict=False)
    with pytest.raises(GraphError):
        Graph().add_node({"type": "resize"})


def test_whole_graph_from_dict_in_any_order():
    data = {
        "nodes": [{"id": "r", "type": "resize", "width": 8}, {"id": "n", "type": "noise_image", "width": 16}],
        "links": [{"from_node": "n", "from_field": "image", "to_node": "r", "to_field": "image"}],
    }
    graph = Graph.from_dict(data, strict=True)
    assert list(graph.order) == ["n", "r"]
    assert Graph.from_dict(graph.to_dict()).to_dict() == graph.to_dict()


def test_older_node_version_without_migration_is_a_clear_error(monkeypatch):
    data = {"nodes": [{"id": "1", "type": "integer", "version": "0.9.0", "value": 1}], "links": []}
    with pytest.raises(GraphError, match=r"node '1' \(integer\): saved with version 0.9.0.*no migration"):
        Graph.from_dict(data)
    newer = {"nodes": [{"id": "1", "type": "integer", "version": "9.0.0"}], "links": []}
    with pytest.raises(GraphError, match="newer version 9.0.0"):
        Graph.from_dict(newer)


def test_older_node_version_is_migrated_when_the_node_knows_how(monkeypatch):
    from nodes.primitives import IntegerInvocation

    def migrate(cls, values, from_version):
        return {"value": int(values.pop("number"))}

    monkeypatch.setattr(IntegerInvocation, "migrate", classmethod(migrate))
    graph = Graph.from_dict({"nodes": [{"id": "1", "type": "integer", "version": "0.9.0", "number": "7"}], "links": []})
    assert graph.nodes["1"].values == {"value": 7}
