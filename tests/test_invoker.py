"""The invoker: run all / run next, events, cancel, failure isolation, output cache, iterate/collect."""
from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image

from services.engine.events import NODE_COMPLETED, NODE_FAILED, NODE_PROGRESS, NODE_STARTED, SESSION_CANCELED, SESSION_COMPLETED
from tests import engine_nodes
from tests.engine_nodes import RUNS


def _chain(session, length, tag):
    session.add_node({"type": "test_counting", "tag": f"{tag}1"})
    for i in range(2, length + 1):
        session.add_node({"type": "test_counting", "tag": f"{tag}{i}"}, [(-1, "value", "value")])


def _record(services, session):
    events = []
    services.events.subscribe(lambda e: events.append((e.type, e.node_id, e.data.get("state"))), session.id)
    return events


def test_run_all_computes_values_and_emits_events(invoker, services):
    session = invoker.create_session()
    _chain(session, 3, "all")
    events = _record(services, session)
    invoker.invoke(session)
    assert invoker.wait(session.id, 10)
    assert [session.results[n][0].outputs["value"] for n in ("1", "2", "3")] == [1, 2, 3]
    assert events == [
        (NODE_STARTED, "1", None), (NODE_COMPLETED, "1", "completed"),
        (NODE_STARTED, "2", None), (NODE_COMPLETED, "2", "completed"),
        (NODE_STARTED, "3", None), (NODE_COMPLETED, "3", "completed"),
        (SESSION_COMPLETED, None, None),
    ]
    assert session.history == ["1", "2", "3"]


def test_run_next_runs_one_node_at_a_time(invoker):
    session = invoker.create_session()
    _chain(session, 3, "next")
    for expected in (["completed", "pending", "pending"], ["completed", "completed", "pending"]):
        invoker.invoke(session, run_all=False)
        assert invoker.wait(session.id, 10)
        assert [session.node_state(n) for n in ("1", "2", "3")] == expected


def test_nodes_appended_after_a_run_run_next_time_and_old_ones_do_not_rerun(invoker):
    session = invoker.create_session()
    _chain(session, 2, "grow")
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    session.add_node({"type": "test_counting", "tag": "grow3"}, [(-1, "value", "value")])
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    assert session.results["3"][0].outputs == {"value": 3}
    assert RUNS["grow1"] == RUNS["grow2"] == RUNS["grow3"] == 1


def test_a_failing_node_fails_alone_and_the_worker_survives(invoker, services):
    session = invoker.create_session()
    session.add_node({"type": "test_failing"})
    session.add_node({"type": "test_counting", "tag": "child"}, [(-1, "value", "value")])
    session.add_node({"type": "test_counting", "tag": "independent"})
    events = _record(services, session)
    invoker.invoke(session)
    assert invoker.wait(session.id, 10)
    assert session.node_state("1") == "failed"
    error = session.results["1"][0].error
    assert error.startswith("node '1' (test_failing): unexpected RuntimeError: boom on purpose (traceback in ")
    assert error.endswith("invoke-nodes.log)")
    assert session.node_state("2") == "skipped" and "input node '1' (test_failing) failed" in session.results["2"][0].error
    assert session.node_state("3") == "completed"
    assert (NODE_FAILED, "1", "failed") in events and (NODE_FAILED, "2", "skipped") in events
    # the worker thread is still alive and serves the next job
    other = invoker.create_session()
    other.add_node({"type": "integer", "value": 5})
    invoker.invoke(other)
    assert invoker.wait(other.id, 10) and other.node_state("1") == "completed"


def test_an_engine_fault_fails_the_node_instead_of_leaving_the_session_running(invoker, services, monkeypatch):
    """A fault outside the node's own code (here the output cache's store) fails that node; the
    session still completes, so no app waits on a node shown as running forever."""
    def full_disk(key, outputs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(services.cache, "put", full_disk)
    session = invoker.create_session()
    session.add_node({"type": "test_counting", "tag": "faulty"})
    session.add_node({"type": "test_counting", "tag": "child"}, [(-1, "value", "value")])
    events = _record(services, session)
    invoker.invoke(session)
    assert invoker.wait(session.id, 10)
    assert session.node_state("1") == "failed" and "No space left on device" in session.results["1"][0].error
    assert session.node_state("2") == "skipped"
    assert events[-1][0] == SESSION_COMPLETED


def test_missing_required_input_fails_at_run_time_naming_the_field(invoker):
    session = invoker.create_session()
    session.add_node({"type": "resize"}, strict=False)
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    assert session.results["1"][0].error == "node '1' (resize), field 'image': required input has neither a value nor a link"


def test_cancel_returns_at_once_and_stops_within_a_step(invoker, services):
    engine_nodes.STARTED.clear()
    session = invoker.create_session()
    session.add_node({"type": "test_slow", "steps": 1000})
    session.add_node({"type": "test_counting", "tag": "after_cancel"}, [(-1, "value", "value")])
    events = _record(services, session)
    invoker.invoke(session)
    assert engine_nodes.STARTED.wait(10)
    time.sleep(0.05)
    begin = time.perf_counter()
    invoker.cancel(session.id)
    returned = time.perf_counter() - begin
    assert invoker.wait(session.id, 5)
    stopped = time.perf_counter() - begin
    assert returned < 0.01 and stopped < 0.5
    assert session.node_state("1") == "canceled" and session.node_state("2") == "pending"
    assert events[-1][0] == SESSION_CANCELED
    progress = [e for e in events if e[0] == NODE_PROGRESS]
    assert 0 < len(progress) < 1000
    # a canceled session runs again from where it stopped
    session2 = session.set_value("1", "steps", 3)
    invoker.add_session(session2)
    invoker.invoke(session2)
    assert invoker.wait(session2.id, 10)
    assert session2.results["2"][0].outputs == {"value": 4}


def test_cancel_of_a_queued_session_drops_its_job(services):
    from services.invoker import Invoker

    invoker = Invoker(services, start=False)
    session = invoker.create_session()
    session.add_node({"type": "integer"})
    events = _record(services, session)
    invoker.invoke(session)
    invoker.cancel(session.id)
    assert not invoker.is_busy(session.id)
    assert events == [(SESSION_CANCELED, None, None)]
    invoker.start()
    invoker.invoke(session)
    assert invoker.wait(session.id, 10) and session.node_state("1") == "completed"
    invoker.shutdown()


def test_fork_reruns_only_the_changed_node_and_its_descendants(invoker):
    session = invoker.create_session()
    session.add_node({"type": "test_counting", "tag": "f_a"})
    session.add_node({"type": "test_counting", "tag": "f_b"}, [(-1, "value", "value")])
    session.add_node({"type": "test_counting", "tag": "f_side"})
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    fork = session.set_value("2", "tag", "f_b2")
    assert fork.parent_id == session.id
    invoker.add_session(fork)
    invoker.invoke(fork)
    invoker.wait(fork.id, 10)
    assert [fork.node_state(n) for n in ("1", "2", "3")] == ["cached", "completed", "cached"]
    assert RUNS["f_a"] == 1 and RUNS["f_side"] == 1 and RUNS["f_b2"] == 1
    assert fork.results["2"][0].outputs == {"value": 2}


def test_rerunning_an_unchanged_graph_hits_the_cache_even_in_a_new_session(invoker):
    graph = {"nodes": [{"id": "a", "type": "test_counting", "tag": "same"}], "links": []}
    for _ in range(3):
        session = invoker.create_session(graph)
        invoker.invoke(session)
        invoker.wait(session.id, 10)
    assert RUNS["same"] == 1
    assert session.node_state("a") == "cached"


def test_cached_image_output_whose_file_is_gone_runs_again(invoker, services):
    session = invoker.create_session({"nodes": [{"id": "n", "type": "noise_image", "width": 8, "height": 8, "seed": 3}], "links": []})
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    name = session.results["n"][0].outputs["image"]["image_name"]
    services.images.delete(name)
    again = invoker.create_session(session.graph.to_dict())
    invoker.invoke(again)
    invoker.wait(again.id, 10)
    assert again.node_state("n") == "completed"
    assert services.images.exists(again.results["n"][0].outputs["image"]["image_name"])


def test_iterate_and_collect_make_one_image_per_seed(invoker, services):
    session = invoker.create_session()
    session.add_node({"type": "random_range", "size": 4, "seed": 11})
    session.add_node({"type": "iterate"}, [(-1, "collection", "collection")])
    session.add_node({"type": "noise_image", "width": 16, "height": 16, "scale": 4}, [(-1, "item", "seed")])
    session.add_node({"type": "collect"}, [(-1, "image", "item")])
    invoker.invoke(session)
    assert invoker.wait(session.id, 20)
    seeds = session.results["1"][0].outputs["collection"]
    noise_rows = session.results["3"]
    assert len(noise_rows) == 4
    assert [r.index for r in noise_rows] == [(("2", i),) for i in range(4)]
    images = session.results["4"][0].outputs["collection"]
    assert [i["image_name"] for i in images] == [r.outputs["image"]["image_name"] for r in noise_rows]
    pixels = [np.asarray(services.images.get(i["image_name"])) for i in images]
    assert all(p.shape == (16, 16, 3) for p in pixels)
    assert len({p.tobytes() for p in pixels}) == 4, "four different seeds give four different images"
    # the image of item 0 is the image of its seed
    single = invoker.create_session({"nodes": [{"id": "x", "type": "noise_image", "width": 16, "height": 16, "scale": 4, "seed": seeds[0]}], "links": []})
    invoker.invoke(single)
    invoker.wait(single.id, 10)
    assert single.results["x"][0].outputs["image"] == images[0], "same inputs: served from the cache"


def test_two_iterations_join_by_index(invoker):
    session = invoker.create_session()
    session.add_node({"type": "range", "start": 0, "stop": 3})
    session.add_node({"type": "iterate"}, [(-1, "collection", "collection")])
    session.add_node({"type": "math", "operation": "mul", "b": 10}, [(-1, "item", "a")])
    session.add_node({"type": "math", "operation": "add"}, [(-1, "value", "a"), (-2, "item", "b")])
    session.add_node({"type": "collect"}, [(-1, "value", "item")])
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    assert session.results["5"][0].outputs["collection"] == [0, 11, 22]


def test_many_sessions_queue_and_all_finish(invoker):
    sessions = []
    for i in range(5):
        session = invoker.create_session()
        _chain(session, 3, f"q{i}_")
        invoker.invoke(session)
        sessions.append(session)
    for session in sessions:
        assert invoker.wait(session.id, 10)
        assert session.is_complete()


def test_progress_events_reach_subscribers_from_the_worker_thread(invoker, services):
    session = invoker.create_session()
    session.add_node({"type": "test_slow", "steps": 5})
    threads = set()
    steps = []

    def on_event(event):
        threads.add(threading.current_thread().name)
        if event.type == NODE_PROGRESS:
            steps.append(event.data["step"])

    services.events.subscribe(on_event, session.id)
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    assert steps == [1, 2, 3, 4, 5]
    assert threads == {"invoker"}


def test_sessions_are_stored_and_read_back_with_results(invoker, services):
    session = invoker.create_session()
    session.add_node({"type": "solid_color", "width": 4, "height": 4, "color": "red"})
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    from services.stores.sessions import DiskSessionStore

    fresh = DiskSessionStore(services.settings.sessions_dir).get(session.id)
    assert fresh.to_dict() == session.to_dict()
    name = fresh.results["1"][0].outputs["image"]["image_name"]
    assert Image.open(services.images.path(name)).getpixel((0, 0)) == (255, 0, 0)


def test_reopened_fan_out_session_is_served_from_the_cache(invoker, services):
    session = invoker.create_session()
    session.add_node({"type": "range", "stop": 3})
    session.add_node({"type": "iterate"}, [(-1, "collection", "collection")])
    session.add_node({"type": "test_counting", "tag": "per_item"}, [(-1, "item", "value")])
    invoker.invoke(session)
    invoker.wait(session.id, 10)
    assert RUNS["per_item"] == 3
    services.cache.clear()
    from services.engine.session import Session

    reopened = invoker.add_session(Session.from_json(session.to_json()).clone())
    rerun = invoker.add_session(reopened.set_value("1", "start", 0))
    invoker.invoke(rerun)
    invoker.wait(rerun.id, 10)
    assert RUNS["per_item"] == 3, "every item came from the warmed cache"
    assert [r.outputs["value"] for r in rerun.results["3"]] == [1, 2, 3]


# --- saved results whose images are gone (issue 21) ---------------------------------------------

CHAIN = {"nodes": [{"id": "size", "type": "integer", "value": 24},
                   {"id": "noise", "type": "noise_image", "height": 16, "scale": 4, "seed": 9},
                   {"id": "half", "type": "scale", "factor": 0.5},
                   {"id": "show", "type": "show_image"}],
         "links": [{"from_node": "size", "from_field": "value", "to_node": "noise", "to_field": "width"},
                   {"from_node": "noise", "from_field": "image", "to_node": "half", "to_field": "image"},
                   {"from_node": "half", "from_field": "image", "to_node": "show", "to_field": "image"}]}


def _run(invoker, session):
    events = _record(invoker.services, session)
    invoker.invoke(session)
    assert invoker.wait(session.id, 20)
    return [node for kind, node, _ in events if kind == NODE_STARTED]


def _image(invoker, session, node_id):
    return np.asarray(invoker.images.get(session.results[node_id][0].outputs["image"]["image_name"]))


def test_saved_session_opened_where_its_images_are_gone_is_stale_and_run_makes_them(invoker, elsewhere, tmp_path):
    from services.stores.sessions import write_session_file

    sent = invoker.create_session(CHAIN)
    _run(invoker, sent)
    write_session_file(sent, tmp_path / "sent.json")
    other = elsewhere()
    opened = other.open_session(tmp_path / "sent.json")
    states = {n: opened.node_state(n) for n in opened.graph.order}
    assert states == {"size": "cached", "noise": "stale", "half": "stale", "show": "stale"}
    assert other.read_session(opened.id).to_dict()["results"] == opened.to_dict()["results"]  # stored as shown
    assert _run(other, opened) == ["noise", "half", "show"]
    assert {n: opened.node_state(n) for n in opened.graph.order} == {
        "size": "cached", "noise": "completed", "half": "completed", "show": "completed"}
    for node_id in ("noise", "half", "show"):
        assert np.array_equal(_image(other, opened, node_id), _image(invoker, sent, node_id))  # same seed, same pixels
    assert _image(other, opened, "show").shape == (8, 12, 3)
    # saved again with its images present here: opening it runs nothing, every node cached
    write_session_file(opened, tmp_path / "ran.json")
    again = other.open_session(tmp_path / "ran.json")
    assert {again.node_state(n) for n in again.graph.order} == {"cached"}
    assert _run(other, again) == []
    assert {again.node_state(n) for n in again.graph.order} == {"cached"}


def test_images_deleted_while_the_app_runs_are_made_again_on_the_next_run(invoker):
    session = invoker.create_session(CHAIN)
    _run(invoker, session)
    names = {n: session.results[n][0].outputs["image"]["image_name"] for n in ("noise", "half")}
    invoker.images.delete(names["half"])  # the gallery's delete, or by hand
    assert _run(invoker, session) == ["half", "show"]  # show passes half's image on: it named the gone one too
    assert session.results["noise"][0].outputs["image"]["image_name"] == names["noise"]
    made = session.results["half"][0].outputs["image"]["image_name"]
    assert made != names["half"] and session.results["show"][0].outputs["image"]["image_name"] == made
    assert np.array_equal(_image(invoker, session, "half"), _image(invoker, session, "show"))
    assert _image(invoker, session, "half").shape == (8, 12, 3)
    assert _run(invoker, session) == []  # nothing missing any more


def test_only_the_missing_item_of_a_fan_out_is_made_again(invoker, services, tmp_path):
    from services.stores.sessions import write_session_file

    session = invoker.create_session()
    session.add_node({"type": "random_range", "size": 3, "seed": 4})
    session.add_node({"type": "iterate"}, [(-1, "collection", "collection")])
    session.add_node({"type": "noise_image", "width": 8, "height": 8, "scale": 2}, [(-1, "item", "seed")])
    session.add_node({"type": "collect"}, [(-1, "image", "item")])
    _run(invoker, session)
    before = [r.outputs["image"]["image_name"] for r in session.results["3"]]
    write_session_file(session, tmp_path / "fan.json")
    services.images.delete(before[1])
    services.cache.clear()  # a new process: only the file's results are known
    opened = invoker.open_session(tmp_path / "fan.json")
    assert [opened.node_state(n) for n in ("1", "2", "3", "4")] == ["cached", "cached", "stale", "stale"]
    assert _run(invoker, opened) == ["3", "4"]
    rows = opened.results["3"]
    assert [r.state for r in rows] == ["cached", "completed", "cached"]  # the live items came from the file
    after = [r.outputs["image"]["image_name"] for r in rows]
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert [i["image_name"] for i in opened.results["4"][0].outputs["collection"]] == after
    assert all(services.images.exists(name) for name in after)


def test_objects_of_a_saved_session_are_gone_in_a_new_process_and_run_again(invoker, elsewhere, tmp_path):
    from services.stores.sessions import write_session_file

    session = invoker.create_session({"nodes": [{"id": "obj", "type": "test_object", "tag": "kept"}], "links": []})
    _run(invoker, session)
    assert invoker.services.objects.exists(session.results["obj"][0].outputs["latents"]["latents_name"])
    write_session_file(session, tmp_path / "objects.json")
    other = elsewhere("restarted")  # objects live in memory: a restart loses them
    opened = other.open_session(tmp_path / "objects.json")
    assert opened.node_state("obj") == "stale"
    assert _run(other, opened) == ["obj"] and RUNS["kept"] == 2
    assert other.services.objects.exists(opened.results["obj"][0].outputs["latents"]["latents_name"])


def test_run_only_some_nodes(invoker):
    """`only` ("run to here"): the other nodes are left as they are."""
    session = invoker.create_session()
    _chain(session, 3, "only")
    invoker.invoke(session, only={"1", "2"})
    assert invoker.wait(session.id, 10)
    assert [session.node_state(n) for n in ("1", "2", "3")] == ["completed", "completed", "pending"]


def test_queue_pause_reorder_and_list(invoker):
    invoker.pause()
    try:
        sessions = []
        for i in range(3):
            session = invoker.create_session()
            _chain(session, 1, f"p{i}_")
            invoker.invoke(session)
            sessions.append(session)
        time.sleep(0.3)
        assert invoker.paused and all(not s.is_complete() for s in sessions)  # nothing starts while paused
        ids = [s.id for s in sessions]
        assert invoker.queued() == ids
        assert invoker.move_queued(ids[2], -5) and invoker.queued() == [ids[2], ids[0], ids[1]]
        assert not invoker.move_queued(ids[2], -1) and not invoker.move_queued("nope", 1)
    finally:
        invoker.pause(False)
    for session in sessions:
        assert invoker.wait(session.id, 10) and session.is_complete()
    assert invoker.queued() == []
