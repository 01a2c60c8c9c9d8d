"""Sessions: fork lineage, versioned JSON round trip, corrupt and newer files, PNG-embedded graphs."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from services.engine.graph import GraphError, Link
from services.stores.images import read_embedded
from services.engine.session import SESSION_SCHEMA_VERSION, Session, SessionFormatError
from services.stores.sessions import SessionFileError, read_session_file, write_session_file


def _ran_session(invoker):
    session = invoker.create_session()
    session.add_node({"type": "noise_image", "width": 16, "height": 8, "seed": 5})
    session.add_node({"type": "resize", "width": 8, "height": 4}, [(-1, "image", "image")])
    session.add_node({"type": "test_failing"})
    session.ui["positions"] = {"1": [10, 20], "2": [200, 20]}
    invoker.invoke(session)
    assert invoker.wait(session.id, 10)
    return session


def test_json_round_trip_is_identical(invoker, tmp_path):
    session = _ran_session(invoker)
    path = tmp_path / "graph.json"
    write_session_file(session, path)
    loaded = read_session_file(path)
    assert loaded.to_dict() == session.to_dict()
    data = json.loads(path.read_text())
    assert data["schema_version"] == SESSION_SCHEMA_VERSION
    assert "node '3' (test_failing): unexpected RuntimeError: boom on purpose" in data["results"]["3"][0]["error"]
    assert data["ui"]["positions"]["2"] == [200, 20]
    assert [n["version"] for n in data["graph"]["nodes"]] == ["1.0.0"] * 3


def test_fork_lineage_is_recorded_and_the_parent_is_untouched(invoker):
    session = _ran_session(invoker)
    before = session.to_dict()
    steps = [
        session.set_value("2", "width", 12),
        session.delete_link(Link("1", "image", "2", "image")),
        session.delete_node("3"),
        session.add_link(Link("1", "width", "2", "height")),
    ]
    assert session.to_dict() == before
    for fork in steps:
        assert fork.parent_id == session.id and fork.id != session.id and fork.change
    assert steps[0].graph.nodes["2"].values["width"] == 12
    assert steps[1].graph.links == []
    assert "3" not in steps[2].graph.nodes
    assert Link("1", "width", "2", "height") in steps[3].graph.links
    grandchild = steps[0].set_value("2", "height", 6)
    assert grandchild.parent_id == steps[0].id


def test_fork_with_a_bad_value_names_node_and_field(invoker):
    session = _ran_session(invoker)
    with pytest.raises(GraphError, match=r"node '2' \(resize\), field 'width'"):
        session.set_value("2", "width", -3)


def test_clone_keeps_results_under_a_new_id(invoker):
    session = _ran_session(invoker)
    clone = session.clone()
    assert clone.id != session.id and clone.parent_id == session.id
    assert clone.to_dict()["results"] == session.to_dict()["results"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"format": "something-else"}', "not an invoke-nodes session"),
        ('{"format": "invoke-nodes/session", "schema_version": 99}', "newer invoke-nodes (schema 99"),
        ('{"format": "invoke-nodes/session", "schema_version": 1, "graph": {"nodes": [{"id": "1", "type": "zzz"}]}}', "unknown node type 'zzz'"),
        ('{"format": "invoke-nodes/session", "schema_version": 1, "results": {"9": []}}', "unknown node '9'"),
    ],
)
def test_bad_files_give_a_clear_error_naming_the_file(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SessionFileError) as caught:
        read_session_file(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_a_failed_save_leaves_the_old_file_untouched(invoker, tmp_path, monkeypatch):
    session = _ran_session(invoker)
    path = tmp_path / "saved" / "graph.json"
    write_session_file(session, path)
    before = path.read_bytes()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    import os

    monkeypatch.setattr(os, "fsync", broken_dump)
    with pytest.raises(OSError):
        write_session_file(session, path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["graph.json"], "no temp file left behind"


def test_every_stored_png_embeds_the_graph_and_it_loads_back(invoker, services, tmp_path):
    session = _ran_session(invoker)
    name = session.results["2"][0].outputs["image"]["image_name"]
    path = services.images.path(name)
    meta = read_embedded(path)
    assert meta["session_id"] == session.id and meta["node_id"] == "2"
    loaded = read_session_file(path)
    assert loaded.graph.to_dict() == session.graph.to_dict()
    assert Image.open(path).size == (8, 4)
    invoker.add_session(loaded)
    invoker.invoke(loaded)
    invoker.wait(loaded.id, 10)
    assert loaded.results["2"][0].outputs == session.results["2"][0].outputs, "the same graph is served from the cache"


def test_png_without_a_graph_is_refused_clearly(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(SessionFileError, match="carries no invoke-nodes graph"):
        read_session_file(path)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(SessionFileError, match="not an image"):
        read_session_file(junk)


def test_schema_version_must_be_an_integer():
    with pytest.raises(SessionFormatError, match="schema_version must be an integer"):
        Session.from_dict({"format": "invoke-nodes/session", "schema_version": "1"})


def test_stores_answer_no_for_impossible_names(services):
    long_name = "a" * 5000
    assert not services.images.exists(long_name) and not services.images.exists("../x.png")
    assert not services.sessions.exists(long_name) and not services.sessions.exists("../x")
