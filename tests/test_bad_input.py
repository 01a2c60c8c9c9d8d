"""Issue 12, item by item: bad input never ends a run with a traceback, hangs, or writes where it
should not.  (The file-by-file matrix over every entry point is test_hostile.py.)"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.api.launch import api_server, free_port
from app.cli_schema import parse_command
from nodes.discovery import load_builtin_nodes
from services.engine.graph import Graph, GraphError
from services.engine.session import Session
from services.models.manager import LocalModelManager
from services.stores.sessions import write_session_file
from tests.hostile import scan_within
from tests.test_cli_terminal import cli_env, pixels, run_app

load_builtin_nodes()


def run_graph(invoker, nodes: list[tuple[dict, list]]) -> Session:
    session = invoker.create_session()
    for data, links in nodes:
        session.add_node(data, links)
    invoker.invoke(session)
    assert invoker.wait(session.id, 30), "the run never ended"
    return session


# --- 1. an empty fan-out ---------------------------------------------------------------------


@pytest.mark.parametrize("source", [{"type": "range", "start": 0, "stop": 0}, {"type": "random_range", "size": 0}])
def test_iterate_over_an_empty_list_completes_and_collects_nothing(invoker, source):
    session = run_graph(invoker, [(source, []), ({"type": "iterate"}, [(-1, "collection", "collection")]),
                                  ({"type": "math", "b": 1}, [(-1, "item", "a")]),
                                  ({"type": "collect"}, [(-1, "value", "item")])])
    assert session.is_complete(), session.errors()
    assert [session.node_state(n) for n in session.graph.order] == ["completed"] * 4
    assert session.outputs("4") == [{"collection": []}]
    assert session.outputs("3") == []  # the math node ran zero times


def test_empty_iterate_over_the_api_ends_with_session_completed(tmp_path):
    with api_server(tmp_path / "user") as server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        graph = {"nodes": [{"id": "r", "type": "range", "start": 0, "stop": 0}, {"id": "i", "type": "iterate"},
                           {"id": "m", "type": "math", "b": 1}],
                 "links": [{"from_node": "r", "from_field": "collection", "to_node": "i", "to_field": "collection"},
                           {"from_node": "i", "from_field": "item", "to_node": "m", "to_field": "a"}]}
        sid = http.post("/api/v1/sessions", json=graph).json()["id"]
        assert http.put(f"/api/v1/sessions/{sid}/invoke").status_code < 300
        deadline = time.monotonic() + 20
        while (body := http.get(f"/api/v1/sessions/{sid}").json())["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not body["busy"] and body["states"] == {"r": "completed", "i": "completed", "m": "completed"}
        assert "Traceback" not in server.log()


def test_cli_empty_iterate_exits_0_without_a_traceback(tmp_path):
    result = run_app(tmp_path / "user", "cli", "-c", "range --start 0 --stop 0 | iterate | math --b 1 --link -1 item a"
                     " | collect --link -1 value item --no-link")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "[4] collect completed: collection=[]" in result.stdout


# --- 2, 3. dangling links and FIFOs in the models folder ---------------------------------------


def test_one_dangling_link_or_fifo_leaves_the_other_models_usable(tmp_path):
    from services.config import Settings
    from services.models import demo

    models = tmp_path / "models"
    demo.write_tiny_vae_folder(models / "good-vae")
    (models / "x.safetensors").symlink_to("/nonexistent")
    os.mkfifo(models / "f.safetensors")
    settings = Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "c", models_dir=models, outputs_dir=tmp_path / "o",
                        sessions_dir=tmp_path / "s", plugins_dir=tmp_path / "p", device="cpu")
    manager = LocalModelManager(settings)
    scan_within(manager, 60)
    assert [m.id for m in manager.list()] == ["good-vae"]
    assert manager.get("good-vae", kind="vae").format == "diffusers"
    reasons = {Path(u.path).name: u.reason for u in manager.unrecognized()}
    assert reasons == {"x.safetensors": "a link to /nonexistent, which does not exist",
                       "f.safetensors": "not a regular file (a FIFO, socket or device); skipped"}


def test_symlinked_model_folders_are_followed_once(tmp_path):
    from services.config import Settings
    from services.models import demo

    elsewhere, models = tmp_path / "elsewhere", tmp_path / "models"
    demo.write_tiny_vae_folder(elsewhere / "vae-a")
    models.mkdir()
    (models / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(models, target_is_directory=True)  # a cycle: walked once
    settings = Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "c", models_dir=models, outputs_dir=tmp_path / "o",
                        sessions_dir=tmp_path / "s", plugins_dir=tmp_path / "p", device="cpu")
    assert [m.id for m in LocalModelManager(settings).list()] == ["linked-vae-a"]


def test_model_scan_is_answered_from_the_cache_in_a_new_process(tmp_path, monkeypatch):
    from services.config import Settings
    from services.models import demo, manager as manager_module

    models = tmp_path / "models"
    demo.write_tiny_vae_folder(models / "vae")
    (models / "notes.bin").write_bytes(b"\0" * 16)
    settings = Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "c", models_dir=models, outputs_dir=tmp_path / "o",
                        sessions_dir=tmp_path / "s", plugins_dir=tmp_path / "p", device="cpu")
    first = LocalModelManager(settings)
    listed, refused = first.list(), first.unrecognized()
    assert (tmp_path / "data" / "cache" / "model_scan.json").is_file()

    def no_probing(path):
        raise AssertionError(f"probed {path} again")

    monkeypatch.setattr(manager_module, "_probe_file", no_probing)
    monkeypatch.setattr(manager_module, "_probe_component_folder", no_probing)
    second = LocalModelManager(settings)  # as a new process would: a fresh manager, the same files
    assert second.list() == listed and second.unrecognized() == refused


# --- 6. --link with a non-ASCII digit ------------------------------------------------------------


def test_link_with_a_superscript_digit_is_a_node_name_not_a_crash(tmp_path):
    assert parse_command(["math", "--link", "-¹", "value", "a"]).links == [("-¹", "value", "a")]
    result = run_app(tmp_path / "user", "cli", "-c", "integer --value 1 | math --b 2 --link -¹ value a")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: math --link: link from unknown node '-¹' (links run from existing nodes)"


# --- 7. collect of mixed types ------------------------------------------------------------------


def test_collect_of_mixed_types_is_refused_when_the_link_is_added():
    graph = Graph()
    graph.add_node({"id": "img", "type": "solid_color", "width": 4, "height": 4})
    graph.add_node({"id": "txt", "type": "string", "value": "x"})
    with pytest.raises(GraphError) as caught:
        graph.add_node({"id": "c", "type": "collect"}, [("img", "image", "item"), ("txt", "value", "item")])
    assert (caught.value.node_id, caught.value.field) == ("c", "item")
    assert "cannot collect str output 'txt.value' with the image values already linked here" in str(caught.value)
    assert "c" not in graph.nodes
    graph.add_node({"id": "i", "type": "integer", "value": 1})
    graph.add_node({"id": "f", "type": "float", "value": 0.5})
    graph.add_node({"id": "n", "type": "collect"}, [("i", "value", "item"), ("f", "value", "item")])  # int widens


# --- 8. unexpected failures: one line naming the node, the traceback in the log file ----------------

BROKEN_PLUGIN = textwrap.dedent('''
    from typing import ClassVar, Literal

    from nodes.base import BaseInvocation, InputField
    from nodes.outputs import IntOutput


    class BrokenInvocation(BaseInvocation):
        """A node with a bug."""

        type: Literal["broken"] = "broken"
        category: ClassVar[str] = "testing"
        value: int = InputField(1)

        def invoke(self, context) -> IntOutput:
            return IntOutput(value={}[self.value])


    class BrokenInWorkerInvocation(BrokenInvocation):
        """The same bug, in the AI worker process."""

        type: Literal["broken_in_worker"] = "broken_in_worker"
        runs_in_worker: ClassVar[bool] = True
''')


def test_an_unexpected_node_failure_is_one_line_and_the_traceback_goes_to_the_log(tmp_path):
    root = tmp_path / "user"
    (root / "plugins").mkdir(parents=True)
    (root / "plugins" / "broken.py").write_text(BROKEN_PLUGIN)
    result = run_app(root, "cli", "-c", "broken --value 3")
    assert result.returncode == 1
    log = root / "logs" / "invoke-nodes.log"
    assert result.stderr.strip() == f"[1] broken failed: node '1' (broken): unexpected KeyError: 3 (traceback in {log})"
    assert "Traceback" not in result.stdout + result.stderr
    text = log.read_text()
    assert "node 1 (broken) failed" in text and "Traceback" in text and "KeyError: 3" in text


def test_an_unexpected_failure_in_the_ai_worker_names_the_node_too(tmp_path):
    root = tmp_path / "user"
    (root / "plugins").mkdir(parents=True)
    (root / "plugins" / "broken.py").write_text(BROKEN_PLUGIN)
    session = Session()
    session.add_node({"type": "integer", "value": 1})
    write_session_file(session, tmp_path / "graph.json")
    data = json.loads((tmp_path / "graph.json").read_text())  # the plugin node is not registered here
    data["graph"]["nodes"].append({"id": "b", "type": "broken_in_worker", "value": 5})
    (tmp_path / "graph.json").write_text(json.dumps(data))
    result = run_app(root, "run", str(tmp_path / "graph.json"), "--executor", "worker", "--out", str(tmp_path / "out"))
    log = root / "logs" / "invoke-nodes.log"
    assert result.returncode == 1, result.stderr
    assert (f"invoke-nodes run: node 'b' (broken_in_worker) failed: node 'b' (broken_in_worker): unexpected KeyError: 5 "
            f"(traceback in {log})") in result.stderr.splitlines()
    assert "Traceback" not in result.stdout + result.stderr
    assert "KeyError: 5" in log.read_text() and "Traceback" in log.read_text()


# --- 9. a loopback --host other than 127.0.0.1 ----------------------------------------------------


def test_host_127_0_0_2_answers_its_own_requests(tmp_path):
    root = tmp_path / "user"
    root.mkdir()
    port = free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("127.0.0.2 is not routed to loopback here")
    process = subprocess.Popen([sys.executable, "-m", "app", "api", "--host", "127.0.0.2", "--port", str(port),
                                "--log-level", "warning"], cwd=root, env=cli_env(root), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline, response = time.monotonic() + 30, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.2:{port}/api/v1/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None and response.status_code == 200, response and response.text
        # still loopback-only: a name that is not this address is refused (DNS rebinding)
        other = httpx.get(f"http://127.0.0.2:{port}/api/v1/health", headers={"host": "evil.example"}, timeout=5)
        assert other.status_code == 400 and other.json()["error"] == "bad_host"
    finally:
        process.terminate()
        process.wait(10)


# --- 10. where save_image writes ----------------------------------------------------------------


def save_nodes(**values) -> list[tuple[dict, list]]:
    return [({"type": "solid_color", "width": 4, "height": 2, "color": "#00ff00"}, []),
            ({"type": "save_image", **values}, [(-1, "image", "image")])]


def test_save_image_writes_inside_the_outputs_folder_and_never_overwrites(invoker, services):
    outputs = Path(services.settings.outputs_dir)
    first = run_graph(invoker, save_nodes(filename="shot"))
    assert first.is_complete(), first.errors()
    existing = outputs / "saved" / "shot.png"
    assert pixels(existing).size == (4, 2)
    stamp = existing.stat().st_mtime_ns
    run_graph(invoker, save_nodes(filename="shot"))
    run_graph(invoker, save_nodes(folder="mine", filename="shot.png"))  # relative: inside the outputs folder
    assert existing.stat().st_mtime_ns == stamp and (outputs / "saved" / "shot-1.png").is_file()
    assert (outputs / "mine" / "shot.png").is_file()
    replaced = run_graph(invoker, save_nodes(filename="shot", overwrite=True))
    assert replaced.is_complete() and existing.stat().st_mtime_ns != stamp
    assert sorted(p.name for p in (outputs / "saved").iterdir()) == ["shot-1.png", "shot.png"]


@pytest.mark.parametrize("folder", ["{tmp}/elsewhere/deep", "../escape", "{outputs}/link-out/x"])
def test_save_image_outside_the_allowed_folders_is_refused_and_creates_nothing(invoker, services, tmp_path, folder):
    outputs = Path(services.settings.outputs_dir)
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "link-out").symlink_to(tmp_path / "target", target_is_directory=True)  # a link leading outside
    folder = folder.format(tmp=tmp_path, outputs=outputs)

    def outside_the_stores() -> list[Path]:  # the run itself writes images and sessions
        stores = (outputs, Path(services.settings.sessions_dir))
        return sorted(p for p in tmp_path.rglob("*") if not any(p.is_relative_to(s) for s in stores))

    before = outside_the_stores()
    session = run_graph(invoker, save_nodes(folder=folder, filename="x"))
    error = session.errors()["2"]
    assert error.startswith("node '2' (save_image), field 'folder': ") and "is outside the folders nodes may write to" in error
    assert outside_the_stores() == before and not (tmp_path / "target").exists()


def test_save_image_into_a_folder_allowed_in_the_settings(invoker, services, tmp_path):
    services.settings.allowed_write_dirs = [tmp_path / "exports"]
    session = run_graph(invoker, save_nodes(folder=str(tmp_path / "exports" / "day1"), filename="a"))
    assert session.is_complete(), session.errors()
    assert pixels(tmp_path / "exports" / "day1" / "a.png").getpixel((0, 0)) == (0, 255, 0)


def test_a_failed_save_removes_the_folders_it_made(invoker, services):
    outputs = Path(services.settings.outputs_dir)
    session = run_graph(invoker, [({"type": "save_image", "image": {"image_name": "missing.png"}, "folder": "new/deeper"}, [])])
    assert session.node_state("1") == "failed" and not (outputs / "new").exists()


def test_api_without_a_token_writes_to_the_outputs_folder_only(tmp_path):
    root = tmp_path / "user"
    root.mkdir()
    (root / "config").mkdir()
    (root / "config" / "settings.json").write_text(f'{{"allowed_write_dirs": ["{tmp_path / "exports"}"]}}')
    for token in (None, "s3cret"):
        with api_server(root, token=token) as server:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
                graph = {"nodes": [{"id": "c", "type": "solid_color", "width": 4, "height": 4},
                                   {"id": "s", "type": "save_image", "folder": str(tmp_path / "exports"), "filename": "a"}],
                         "links": [{"from_node": "c", "from_field": "image", "to_node": "s", "to_field": "image"}]}
                sid = http.post("/api/v1/sessions", json=graph).json()["id"]
                http.put(f"/api/v1/sessions/{sid}/invoke")
                deadline = time.monotonic() + 20
                while (body := http.get(f"/api/v1/sessions/{sid}").json())["busy"] and time.monotonic() < deadline:
                    time.sleep(0.05)
        if token is None:
            assert body["states"]["s"] == "failed" and "outside the folders nodes may write to" in body["results"]["s"][0]["error"]
            assert not (tmp_path / "exports").exists()
        else:
            assert body["states"]["s"] == "completed" and (tmp_path / "exports" / "a.png").is_file()


def test_prompt_save_does_not_overwrite_without_asking(tmp_path):
    target = tmp_path / "mine.json"
    target.write_text("precious")
    result = run_app(tmp_path / "user", "cli", "-c", "integer --value 1", "-c", f"save {target}")
    assert result.returncode == 2 and target.read_text() == "precious"
    assert f"{target} exists; 'save {target} --overwrite' replaces it" in result.stderr
    assert run_app(tmp_path / "user", "cli", "-c", "integer --value 1", "-c", f"save {target} --overwrite").returncode == 0
    assert '"format": "invoke-nodes/session"' in target.read_text()


# --- 11. run with a failing branch ----------------------------------------------------------------


def test_run_writes_the_completed_branch_when_another_fails(tmp_path):
    session = Session()
    session.add_node({"type": "solid_color", "width": 6, "height": 4, "color": "#0000ff"})
    session.add_node({"type": "scale", "factor": 2}, [(-1, "image", "image")])
    session.add_node({"type": "load_image", "path": str(tmp_path / "missing.png")})
    write_session_file(session, tmp_path / "graph.json")
    out = tmp_path / "out"
    result = run_app(tmp_path / "user", "run", str(tmp_path / "graph.json"), "--out", str(out))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [str(out / "2-scale.png")]
    assert pixels(out / "2-scale.png").size == (12, 8)
    assert "invoke-nodes run: node '3' (load_image) failed: field 'path': no such file" in result.stderr
    assert "Traceback" not in result.stderr


# --- smaller ---------------------------------------------------------------------------------------


def test_docs_and_redoc_load_their_scripts_from_this_server(tmp_path):
    with api_server(tmp_path / "user") as server, httpx.Client(base_url=server.base_url, timeout=30) as http:
        for page, script in (("/docs", "/docs-assets/swagger-ui-bundle.js"), ("/redoc", "/docs-assets/redoc.standalone.js")):
            html = http.get(page).text
            assert script in html and "cdn." not in html and "fonts.googleapis" not in html
            asset = http.get(script)
            assert asset.status_code == 200 and len(asset.content) > 100_000
        created = http.post("/api/v1/sessions", json=None)
        assert created.status_code == 201 and not created.history  # no 307 redirect on the way
        for path in ("/api/v1/sessions", "/api/v1/images", "/api/v1/nodes", "/api/v1/models"):
            response = http.get(path)
            assert response.status_code == 200 and not response.history, path


def test_with_article():
    from nodes.base import with_article

    assert [with_article(w) for w in ("upscaler", "face restore", "vae", "main")] == \
        ["an upscaler", "a face restore", "a vae", "a main"]
