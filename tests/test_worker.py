"""The AI worker process: nodes that declare `runs_in_worker` run there; a crash, a hang or the
app's death never takes the other side down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.config import Settings
from services.container import IN_PROCESS, WORKER, Services
from services.engine.events import NODE_PROGRESS, SESSION_CANCELED
from services.engine.session import COMPLETED, FAILED, SKIPPED
from services.executors.base import WARMING_UP
from services.executors.worker import WorkerGone
from services.invoker import Invoker
from tests import worker_nodes  # noqa: F401 - registers the worker test nodes here; the worker imports them itself

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def invoker(user_root):
    invoker = Invoker(Services.local(Settings.load(), executor=WORKER))
    yield invoker
    invoker.shutdown()


def run_graph(invoker: Invoker, nodes: list[dict], links: list[tuple[str, str, str, str]] = (), listener=None):
    session = invoker.create_session({"nodes": nodes, "links": [
        {"from_node": a, "from_field": b, "to_node": c, "to_field": d} for a, b, c, d in links]})
    invoker.run_and_wait(session, listener)
    return session


def row(session, node_id):
    (result,) = session.results[node_id]
    return result


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited; only its parent's wait is missing


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_worker_nodes_run_in_one_long_lived_child_and_others_here(invoker):
    session = run_graph(invoker, [{"id": "w1", "type": "test_worker_pid"}, {"id": "w2", "type": "test_worker_pid"},
                                  {"id": "here", "type": "test_counting", "value": 1}])
    first, second = row(session, "w1").outputs["value"], row(session, "w2").outputs["value"]
    assert first == second == invoker.services.executor.worker_pid != os.getpid()
    assert row(session, "here").outputs["value"] == 2


@pytest.mark.parametrize("how, ended", [("segfault", "signal 11, SIGSEGV"), ("exit", "exit code 3")])
def test_a_crash_fails_its_node_siblings_still_run_and_the_next_node_gets_a_new_worker(invoker, how, ended):
    before = row(run_graph(invoker, [{"id": "pid", "type": "test_worker_pid"}]), "pid").outputs["value"]
    session = run_graph(invoker, [
        {"id": "crash", "type": "test_worker_crash", "how": how},
        {"id": "sibling", "type": "test_counting", "value": 4},  # in this process, independent of the crash
        {"id": "after", "type": "test_worker_pid"},  # needs a worker again: a fresh one
        {"id": "child", "type": "test_counting"},
    ], links=[("crash", "value", "child", "value")])
    crashed = row(session, "crash")
    assert crashed.state == FAILED
    assert crashed.error == (f"the AI worker stopped ({ended}) while running node 'crash' (test_worker_crash); "
                             "the next run starts a new one")
    assert row(session, "sibling").state == COMPLETED and row(session, "sibling").outputs["value"] == 5
    assert row(session, "child").state == SKIPPED
    after = row(session, "after")
    assert after.state == COMPLETED and after.outputs["value"] not in (before, os.getpid())
    assert not alive(before)


def test_cancel_across_the_process_stops_within_one_step(invoker):
    steps, started, canceled = [], threading.Event(), threading.Event()

    def listen(event):
        if event.type == NODE_PROGRESS:
            steps.append(event.data["step"])
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
    assert took < 0.05 + 0.05 + 0.25  # the step in flight, the cancel poll, and slack for a loaded machine
    assert len(steps) - at_cancel <= 2
    assert row(session, "s").state == "canceled"
    assert row(run_graph(invoker, [{"id": "p", "type": "test_worker_pid"}]), "p").state == COMPLETED  # same worker goes on


def test_a_new_worker_has_imported_the_generation_libraries_before_its_first_node(invoker):
    """The worker imports them as it starts, so a first generation pays only for its model; a node
    arriving meanwhile waits for them (importing diffusers from two threads at once breaks it)."""
    names = "diffusers,transformers,nodes.core.diffusion"
    assert row(run_graph(invoker, [{"id": "m", "type": "test_worker_modules", "names": names}]), "m").outputs["value"] == names


def test_a_new_worker_that_compiles_imports_torchs_compiler_after_what_a_first_node_needs(invoker, monkeypatch):
    """The background build of a compiled denoiser needs inductor (importing it delayed a new worker's
    first compiled image by ~6 s on an H200 host); the worker imports it after what nodes wait for."""
    monkeypatch.setenv("INVOKE_NODES_COMPILE", "default")  # read by the worker as it starts
    compiler = "torch._inductor.compile_fx"
    names = f"diffusers,nodes.core.diffusion,{compiler}"
    imported = row(run_graph(invoker, [{"id": "m", "type": "test_worker_modules", "names": names}]), "m").outputs["value"]
    assert imported.startswith("diffusers,nodes.core.diffusion")
    deadline = time.monotonic() + 120
    while compiler not in imported.split(",") and time.monotonic() < deadline:
        time.sleep(0.5)
        imported = row(run_graph(invoker, [{"id": "m", "type": "test_worker_modules", "names": names}]), "m").outputs["value"]
    assert imported == names


def test_nodes_wait_for_the_generation_imports_only_and_the_compiler_import_waits_for_a_build():
    """A node sent during the warm-up starts once diffusers is imported; the compiler is imported on
    the build's terms (its lock, so never beside a build's own imports)."""
    from types import SimpleNamespace

    from nodes.core import compiled
    from services.executors.base import warm_up

    services = SimpleNamespace(models=SimpleNamespace(compile_mode="default"))
    with compiled._BUILD_LOCK:  # a build under way
        warming = warm_up(services)
        warming.join(120)
        assert not warming.is_alive()  # what nodes wait for is done while the build still runs
        compiler = next(t for t in threading.enumerate() if t.name == "warm-up-compiler")
        compiler.join(0.5)
        assert compiler.is_alive()  # waits for the build
    compiler.join(120)
    assert not compiler.is_alive() and "torch._inductor.compile_fx" in sys.modules


def test_previews_cross_as_small_frames_about_twenty_a_second(invoker):
    events = []
    session = run_graph(invoker, [{"id": "s", "type": "test_worker_steps", "steps": 40, "step_s": 0.01}],
                        listener=lambda e: events.append(e) if e.type == NODE_PROGRESS else None)
    assert row(session, "s").state == COMPLETED
    # every step is reported (after the warm-up's message at step 0 while a new worker imports)
    assert all(e.data["message"] == WARMING_UP for e in events if not e.data["step"])
    assert [e.data["step"] for e in events if e.data["step"]] == list(range(1, 41))
    previews = [e.data["preview"] for e in events if "preview" in e.data]
    assert 4 <= len(previews) <= 15  # ~0.4 s of steps: about one preview per 50 ms, plus the last
    assert "preview" in events[-1].data  # the final frame always arrives
    assert all(max(p.size) == 256 for p in previews)  # 512x512 previews shrink before they cross
    assert previews[-1].getpixel((0, 0)) == (40, 0, 0)


def test_a_worker_silent_past_the_limit_is_stopped_and_reported(invoker):
    invoker.settings.worker_hang_s = 3.0  # read at each node
    first = row(run_graph(invoker, [{"id": "pid", "type": "test_worker_pid"}]), "pid").outputs["value"]
    began = time.perf_counter()
    session = run_graph(invoker, [{"id": "hang", "type": "test_worker_hang", "seconds": 120}])
    assert time.perf_counter() - began < 20
    assert row(session, "hang").error == ("the AI worker gave no sign of progress for 3 s while running node 'hang' "
                                          "(test_worker_hang), so it was stopped; the next run starts a new one")
    assert not alive(first)
    again = row(run_graph(invoker, [{"id": "pid", "type": "test_worker_pid"}]), "pid")
    assert again.state == COMPLETED and again.outputs["value"] != first


def test_stopping_the_worker_frees_its_memory(invoker):
    parent_before = rss_mb(os.getpid())
    pid = row(run_graph(invoker, [{"id": "big", "type": "test_worker_pid", "hold_mb": 400}]), "big").outputs["value"]
    assert rss_mb(pid) > 400
    assert rss_mb(os.getpid()) - parent_before < 100  # the memory is the worker's, not ours
    started = time.perf_counter()
    invoker.services.executor.shutdown()
    assert not alive(pid) and invoker.services.executor.worker_pid is None
    assert time.perf_counter() - started < 1.5  # it exits at once (quitting the canvas took ~4.6 s)


def test_after_shutdown_a_late_question_starts_no_worker(invoker):
    # the canvas asks for its model list on a thread at launch: quitting at once must not leave a new
    # worker behind, which the interpreter's exit would wait for forever
    import multiprocessing

    invoker.shutdown()
    with pytest.raises(WorkerGone, match="closing"):
        invoker.list_models()
    assert invoker.services.executor.worker_pid is None and multiprocessing.active_children() == []


def test_the_worker_exits_by_itself_when_the_app_is_killed(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys
        from services.config import Settings
        from services.container import Services
        from services.invoker import Invoker
        from tests import worker_nodes

        if __name__ == "__main__":
            invoker = Invoker(Services.local(Settings.load(), executor="worker"))
            session = invoker.create_session({"nodes": [{"id": "p", "type": "test_worker_pid"}]})
            invoker.run_and_wait(session)
            print(session.results["p"][0].outputs["value"], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    (tmp_path / "app.py").write_text(script)
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "INVOKE_NODES_ROOT": str(tmp_path / "user"), "PYTHONPATH": python_path}
    done = subprocess.run([sys.executable, str(tmp_path / "app.py")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.strip())
    deadline = time.monotonic() + 10
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


def test_models_are_listed_by_the_worker(invoker):
    header = json.dumps({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         {"dtype": "F16", "shape": [320, 768], "data_offsets": [0, 0]}}).encode()
    (invoker.settings.models_dir / "sd15.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (invoker.settings.models_dir / "notes.bin").write_bytes(b"not a model")
    assert [(m.id, m.kind, m.base) for m in invoker.list_models()] == [("sd15", "main", "sd1")]
    assert [Path(u.path).name for u in invoker.unrecognized_models()] == ["notes.bin"]
    assert invoker.services.executor.worker_pid is not None  # asked where the models load


@pytest.mark.usefixtures("torch_one_thread")
def test_upscale_in_the_worker_matches_in_process_pixel_for_pixel(user_root):
    from services.models.restoration_files import write_tiny_upscaler

    results = {}
    for kind in (IN_PROCESS, WORKER):
        settings = Settings.load()
        write_tiny_upscaler(settings.models_dir / "tiny-x4.pth")
        invoker = Invoker(Services.local(settings, executor=kind))
        try:
            session = run_graph(invoker, [{"id": "n", "type": "noise_image", "width": 24, "height": 16, "seed": 3},
                                          {"id": "up", "type": "upscale", "model": "tiny-x4", "tile_size": 32, "tile_overlap": 8}],
                                [("n", "image", "up", "image")])
            result = row(session, "up")
            assert result.state == COMPLETED, result.error
            results[kind] = np.asarray(invoker.images.get(result.outputs["image"]["image_name"]))
        finally:
            invoker.shutdown()
    assert results[IN_PROCESS].shape == (64, 96, 3)
    assert np.array_equal(results[IN_PROCESS], results[WORKER])


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"\nPPid:\t{pid}\n" in status.read_text():
                found.append(int(status.parent.name))
        except OSError:  # gone meanwhile
            pass
    return found


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_api_server_with_the_worker_executor_runs_models_outside_its_process(tmp_path):
    import httpx

    from app.api.launch import api_server
    from services.models.restoration_files import write_tiny_upscaler

    root = tmp_path / "root"
    write_tiny_upscaler(root / "models" / "tiny-x4.pth")  # INVOKE_NODES_ROOT holds the models folder
    graph = {"nodes": [{"id": "n", "type": "noise_image", "width": 16, "height": 16, "seed": 1},
                       {"id": "up", "type": "upscale", "model": "tiny-x4", "tile_size": 32, "tile_overlap": 8}],
             "links": [{"from_node": "n", "from_field": "image", "to_node": "up", "to_field": "image"}]}
    with api_server(root, extra_args=("--executor", "worker")) as server, \
            httpx.Client(base_url=server.base_url + "/api/v1", timeout=30) as http:
        models = http.get("/models/").json()["items"]
        assert [m["id"] for m in models] == ["tiny-x4"]
        session_id = http.post("/sessions/", json=graph).json()["id"]
        assert http.put(f"/sessions/{session_id}/invoke").status_code in (200, 202)
        deadline = time.monotonic() + 120
        while (session := http.get(f"/sessions/{session_id}").json())["busy"] and time.monotonic() < deadline:
            time.sleep(0.2)
        (result,) = session["results"]["up"]
        assert result["state"] == COMPLETED, result
        assert not _maps_torch(server.pid)  # the server never loaded torch ...
        assert any(_maps_torch(pid) for pid in children_of(server.pid))  # ... its AI worker did
