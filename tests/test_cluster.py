"""The Ray executor on a real local Ray with CPU workers: queued sessions and fan-out branches
spread over the workers with the same pixels as in-process; a lost worker is restarted and its
node runs again elsewhere; cancel reaches the worker; images cross without a shared folder."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from services.config import Settings
from services.container import IN_PROCESS, RAY, Services
from services.engine.events import NODE_PROGRESS, SESSION_CANCELED
from services.engine.session import COMPLETED, FAILED
from services.invoker import Invoker
from tests import worker_nodes  # noqa: F401 - the test nodes; the Ray workers import them by name


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One small local Ray for the module (room for two executors of two one-CPU workers) and the
    tiny models, written once."""
    ray = pytest.importorskip("ray")
    from services.models import demo as demo_models

    root = tmp_path_factory.mktemp("cluster")
    demo_models.write_tiny_sd1_diffusers(root / "models" / "tiny-sd1")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=100 * 2**20, logging_level=logging.WARNING)
    yield root
    ray.shutdown()


def settings_for(root, name: str) -> Settings:
    folder = root / name
    settings = Settings(data_dir=folder, config_dir=folder / "config", models_dir=root / "models",
                        outputs_dir=folder / "outputs", sessions_dir=folder / "sessions", plugins_dir=folder / "plugins",
                        device="cpu", cluster="local:2")
    return settings


@pytest.fixture(scope="module")
def invoker(root):
    invoker = Invoker(Services.local(settings_for(root, "ray"), executor=RAY))
    yield invoker
    invoker.shutdown()


@pytest.fixture(scope="module")
def in_process(root):
    invoker = Invoker(Services.local(settings_for(root, "in-process"), executor=IN_PROCESS))
    yield invoker
    invoker.shutdown()


def txt2img(seed: int) -> dict:
    return {"id": "gen", "type": "txt2img", "model": "tiny-sd1", "prompt": "a red cube", "steps": 2, "width": 64,
            "height": 64, "seed": seed}


def pixels(invoker: Invoker, row) -> np.ndarray:
    assert row.state == COMPLETED, row.error
    return np.asarray(invoker.images.get(row.outputs["image"]["image_name"]))


def workers(invoker: Invoker) -> list[dict]:
    return invoker.cluster()["workers"]


def nodes_run(invoker: Invoker) -> list[int]:
    return [w["nodes_run"] for w in workers(invoker)]


def run_graph(invoker: Invoker, nodes: list[dict], links=(), listener=None):
    session = invoker.create_session({"nodes": nodes, "links": [
        {"from_node": a, "from_field": b, "to_node": c, "to_field": d} for a, b, c, d in links]})
    assert invoker.run_and_wait(session, listener)
    return session


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_a_batch_of_sessions_uses_every_worker_with_in_process_pixels(invoker, in_process):
    before = nodes_run(invoker)
    progress: dict[str, list[int]] = {}
    token = invoker.subscribe(lambda e: progress.setdefault(e.session_id, []).append(e.data["step"])
                              if e.type == NODE_PROGRESS else None)
    sessions = [invoker.create_session({"nodes": [txt2img(seed)]}) for seed in range(8)]
    for session in sessions:
        invoker.invoke(session)
    for session in sessions:
        assert invoker.wait(session.id, 300)
    invoker.unsubscribe(token)
    used = [after - first for after, first in zip(nodes_run(invoker), before)]
    assert sum(used) == 8 and all(count > 0 for count in used), used
    assert all(progress[s.id] == [1, 2] for s in sessions)
    for seed, session in enumerate(sessions):
        reference = run_graph(in_process, [txt2img(seed)])
        assert np.array_equal(pixels(invoker, session.results["gen"][0]), pixels(in_process, reference.results["gen"][0]))
    assert {w["device"] for w in workers(invoker)} == {"CPU"}
    assert all(w["models"] == ["tiny-sd1"] for w in workers(invoker))


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_fan_out_branches_go_to_both_workers_in_order(invoker, in_process):
    nodes = [{"id": "seeds", "type": "range", "start": 10, "stop": 14}, {"id": "each", "type": "iterate"},
             {**txt2img(0), "id": "gen"}, {"id": "all", "type": "collect"}]
    links = [("seeds", "collection", "each", "collection"), ("each", "item", "gen", "seed"), ("gen", "image", "all", "item")]
    before = nodes_run(invoker)
    session = run_graph(invoker, nodes, links)
    assert all(after - first >= 1 for after, first in zip(nodes_run(invoker), before))
    rows = session.results["gen"]
    assert [r.index for r in rows] == [(("each", i),) for i in range(4)]
    reference = run_graph(in_process, nodes, links)
    for row, expected in zip(rows, reference.results["gen"]):
        assert np.array_equal(pixels(invoker, row), pixels(in_process, expected))
    assert len(session.results["all"][0].outputs["collection"]) == 4


def granular(seed: int) -> tuple[list[dict], list[tuple[str, str, str, str]]]:
    """loader -> prompts -> empty latents -> denoise -> decode: latents and conditioning pass between nodes."""
    nodes = [{"id": "model", "type": "main_model_loader", "model": "tiny-sd1"},
             {"id": "pos", "type": "prompt", "prompt": "a red cube"}, {"id": "neg", "type": "prompt", "prompt": ""},
             {"id": "empty", "type": "empty_latent", "width": 64, "height": 64},
             {"id": "denoise", "type": "denoise_latents", "steps": 2, "seed": seed}, {"id": "decode", "type": "vae_decode"}]
    links = [("model", "clip", "pos", "clip"), ("model", "clip", "neg", "clip"), ("model", "unet", "denoise", "unet"),
             ("model", "vae", "decode", "vae"), ("empty", "latents", "denoise", "latents"),
             ("pos", "conditioning", "denoise", "positive"), ("neg", "conditioning", "denoise", "negative"),
             ("denoise", "latents", "decode", "latents")]
    return nodes, links


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_latents_and_conditioning_reach_the_worker_that_reads_them(invoker, in_process):
    before = nodes_run(invoker)
    sessions = []
    for seed in range(4):  # side by side on both workers, sharing cached prompts made on either
        nodes, links = granular(seed)
        sessions.append(invoker.create_session({"nodes": nodes, "links": [
            {"from_node": a, "from_field": b, "to_node": c, "to_field": d} for a, b, c, d in links]}))
    for session in sessions:
        invoker.invoke(session)
    for session in sessions:
        assert invoker.wait(session.id, 300)
    assert all(after > first for after, first in zip(nodes_run(invoker), before))
    for seed, session in enumerate(sessions):
        assert not session.errors(), session.errors()
        reference = run_graph(in_process, *granular(seed))
        assert np.array_equal(pixels(invoker, session.results["decode"][0]), pixels(in_process, reference.results["decode"][0]))


@pytest.mark.slow
def test_a_worker_killed_mid_node_is_restarted_and_the_node_runs_again_on_another(invoker):
    steps, killed = [], []

    def listen(event):
        if event.type == NODE_PROGRESS:
            steps.append(event.data["step"])
            if event.data["step"] == 3 and not killed:
                (busy,) = [w for w in workers(invoker) if w["running"]]
                killed.append(busy)
                os.kill(busy["pid"], signal.SIGKILL)

    session = run_graph(invoker, [{"id": "s", "type": "test_worker_steps", "steps": 20, "step_s": 0.05},
                                  {"id": "p", "type": "test_worker_pid"}], listener=listen)
    assert session.results["s"][0].state == COMPLETED and session.results["s"][0].outputs["value"] == 20
    assert steps[:3] == [1, 2, 3] and steps[-20:] == list(range(1, 21))  # the second run starts over
    assert session.results["p"][0].outputs["value"] != killed[0]["pid"]  # no node ran on the killed process
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Ray restarts the lost worker
        now = workers(invoker)
        if all(w["state"] != "unavailable" for w in now):
            break
        time.sleep(0.5)
    restarted = now[killed[0]["id"]]
    assert restarted["restarts"] == 1 and restarted["pid"] != killed[0]["pid"]


@pytest.mark.slow
def test_a_node_that_kills_every_worker_fails_once_retried_and_the_rest_completes(invoker):
    session = invoker.create_session({"nodes": [{"id": "crash", "type": "test_worker_crash", "how": "exit"},
                                                {"id": "sibling", "type": "test_worker_pid"}]})
    invoker.run_and_wait(session)
    crashed = session.results["crash"][0]
    assert crashed.state == FAILED
    assert crashed.error.startswith("Ray worker ") and "while running node 'crash' (test_worker_crash), and worker " in crashed.error
    assert crashed.error.endswith(")") and "which ran it again, stopped too" in crashed.error
    assert session.results["sibling"][0].state == COMPLETED


@pytest.mark.slow
def test_cancel_reaches_the_worker_within_one_step_and_previews_stream_back(invoker):
    steps, previews, started, canceled = [], [], threading.Event(), threading.Event()

    def listen(event):
        if event.type == NODE_PROGRESS:
            steps.append(event.data["step"])
            if "preview" in event.data:
                previews.append(event.data["preview"])
            if event.data["step"] >= 3:
                started.set()
        elif event.type == SESSION_CANCELED:
            canceled.set()

    session = invoker.create_session({"nodes": [{"id": "s", "type": "test_worker_steps", "steps": 400, "step_s": 0.05}]})
    with invoker.watch(listen, session.id):
        invoker.invoke(session)
        assert started.wait(60)
        at_cancel = len(steps)
        began = time.perf_counter()
        invoker.cancel(session.id)
        assert canceled.wait(10)
        took = time.perf_counter() - began
    assert took < 0.05 + 0.05 + 0.5  # the step in flight, the cancel poll, and slack for a loaded machine
    assert len(steps) - at_cancel <= 3
    assert session.results["s"][0].state == "canceled"
    assert previews and all(max(p.size) == 256 for p in previews)  # 512x512 previews shrink before they cross
    assert previews[-1].getpixel((0, 0))[0] >= steps[-1] - 2  # a recent frame (its red is its step), not a stale one


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")
def test_images_cross_through_the_object_store_without_a_shared_folder(root, in_process):
    from services.executors.cluster import ClusterExecutor
    from services.executors.local import InProcessExecutor

    services = Services.local(settings_for(root, "shipped"), executor=RAY)
    services._executor = ClusterExecutor(services.settings, InProcessExecutor(services), ship_images=True)
    invoker = Invoker(services)
    try:
        assert {w["shared_outputs"] for w in workers(invoker)} == {False}
        nodes = [{"id": "src", "type": "noise_image", "width": 64, "height": 64, "seed": 4},
                 {"id": "gen", "type": "img2img", "model": "tiny-sd1", "prompt": "a cat", "steps": 2, "strength": 0.5,
                  "seed": 9}]
        links = [("src", "image", "gen", "image")]
        session = run_graph(invoker, nodes, links)
        name = session.results["gen"][0].outputs["image"]["image_name"]
        assert invoker.images.path(name).is_file()  # brought back into this app's store
        assert invoker.images.metadata(name)["node_id"] == "gen"
        reference = run_graph(in_process, nodes, links)
        assert np.array_equal(pixels(invoker, session.results["gen"][0]), pixels(in_process, reference.results["gen"][0]))
    finally:
        invoker.shutdown()


@pytest.mark.slow
def test_the_api_reports_the_cluster(invoker):
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(invoker)) as client:
        body = client.get("/api/v1/cluster").json()
    assert body["executor"] == "ray"
    assert [w["id"] for w in body["workers"]] == [0, 1]
    assert all(w["device"] == "CPU" and w["state"] in ("idle", "busy") for w in body["workers"])


def test_without_ray_the_api_option_says_how_to_install_it(monkeypatch, user_root, capsys):
    from app.api.server import main

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["--cluster", "local:2"]) == 2
    assert capsys.readouterr().err.strip() == "invoke-nodes api: the Ray executor needs the cluster extra: pip install -e '.[cluster]'"


def test_a_bad_cluster_address_stops_the_api_with_what_works(user_root, capsys):
    from app.api.server import main

    assert main(["--cluster", "remote"]) == 2
    assert "unknown cluster 'remote': use local, local:N (N workers) or ray://HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("address, parsed", [("local", (None, None)), ("local:3", (None, 3)),
                                             ("ray://head:10001", ("ray://head:10001", None))])
def test_cluster_addresses(address, parsed):
    from services.executors.cluster import parse_address

    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["local:0", "remote", "ray://", "local:x"])
def test_a_bad_cluster_address_says_what_works(address):
    from services.executors.cluster import parse_address

    with pytest.raises(ValueError, match="use local, local:N"):
        parse_address(address)
