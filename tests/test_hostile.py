"""The hostile-input matrix: every bad file of tests/hostile.py through every entry point that
takes a file (CLI run and load, load_image, the canvas' Open, the API's upload / create-session /
metadata / thumbnail / models, the model scanner).  Each case: a clear message naming the file and
the reason, the process still up, no file changed, no pickled code run, no traceback on screen."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.api.launch import api_server
from app.canvas.controller import CanvasController
from nodes.discovery import load_builtin_nodes
from services.config import Settings
from services.models.manager import LocalModelManager, ModelNotFoundError
from tests.hostile import Case, image_files, model_files, scan_within, session_files, snapshot
from tests.test_cli_terminal import cli_env

load_builtin_nodes()


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def sessions(bad) -> dict[str, Case]:
    return session_files(bad / "sessions")


@pytest.fixture(scope="module")
def images(bad) -> dict[str, Case]:
    return image_files(bad / "images")


def refusal(case: Case, text: str) -> None:
    """`text` names the file and matches the case's reason."""
    assert str(case.path) in text or case.path.name in text, f"{case.path.name} not named in: {text}"
    assert re.search(case.reason, text), f"{case.path.name}: no /{case.reason}/ in: {text}"


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text, text


# --- CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "empty.json", "binary.json", "deep.json", "nan.json", "future.json", "slash-id.json", "node-slash.json",
    "foreign.json", "bomb.png", "truncated.png", "not-an-image.png", "no-graph.png", "broken-graph.png",
    "deep-graph.png", "huge-graph.png", "fifo.json", "dangling.json", "folder.json"])
def test_run_refuses_each_bad_file_with_one_line(name, sessions, bad, tmp_path):
    case = sessions[name]
    before = snapshot(bad)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "app", "run", str(case.path), "--out", str(out)], cwd=tmp_path,
                            env=cli_env(tmp_path / "user"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invoke-nodes run: "), result.stderr
    refusal(case, lines[0])
    no_traceback(result.stdout, result.stderr)
    assert result.stdout == "" and not out.exists()
    assert snapshot(bad) == before


def test_prompt_load_refuses_every_bad_file_and_keeps_going(sessions, bad, tmp_path):
    before = snapshot(bad)
    script = "".join(f"load {shlex.quote(str(case.path))}\n" for case in sessions.values()) + "integer --value 7\n"
    result = subprocess.run([sys.executable, "-m", "app", "cli", "--no-viewer"], input=script, cwd=tmp_path,
                            env=cli_env(tmp_path / "user"), capture_output=True, text=True, timeout=120)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(sessions), result.stderr
    for line, case in zip(errors, sessions.values()):
        assert line.startswith("error: load: ")
        refusal(case, line)
    assert "[1] integer completed: value=7" in result.stdout  # the prompt was alive after all of them
    assert result.returncode == 2  # a script on stdin reports its worst line
    no_traceback(result.stdout, result.stderr)
    assert snapshot(bad) == before


def test_load_image_refuses_each_bad_image_naming_node_field_and_file(images, bad, tmp_path):
    before = snapshot(bad)
    script = "".join(f"load_image --path {shlex.quote(str(case.path))}\nnew\n" for case in images.values())
    script += "integer --value 7\n"
    result = subprocess.run([sys.executable, "-m", "app", "cli", "--no-viewer"], input=script, cwd=tmp_path,
                            env=cli_env(tmp_path / "user"), capture_output=True, text=True, timeout=120)
    failures = [line for line in result.stderr.splitlines() if "load_image" in line]
    assert len(failures) == len(images), result.stderr
    for line, case in zip(failures, images.values()):
        assert "load_image failed: field 'path'" in line, line
        refusal(case, line)
    assert "[1] integer completed: value=7" in result.stdout
    no_traceback(result.stdout, result.stderr)
    assert snapshot(bad) == before


# --- the canvas ------------------------------------------------------------------------------


def test_canvas_open_refuses_each_bad_file_and_keeps_the_graph(invoker, sessions, bad):
    ctl = CanvasController(invoker)
    try:
        current = ctl.session.to_dict()
        before = snapshot(bad)
        for case in sessions.values():
            assert ctl.open(case.path) is False
            assert ctl.message.startswith("Cannot open: ")
            refusal(case, ctl.message)
            assert any(ctl.message in line for line in ctl.log), "the reason is in the canvas log too"
            assert ctl.session.to_dict() == current
        assert snapshot(bad) == before
    finally:
        ctl.close()


# --- the model scanner -----------------------------------------------------------------------


def test_scanner_lists_each_bad_model_file_with_its_reason_and_runs_none(tmp_path):
    models, marker = tmp_path / "models", tmp_path / "PWNED"
    cases = model_files(models, marker)
    (models / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a dangling folder link
    before = snapshot(models)
    settings = Settings(data_dir=tmp_path / "data", config_dir=tmp_path / "config", models_dir=models,
                        outputs_dir=tmp_path / "out", sessions_dir=tmp_path / "s", plugins_dir=tmp_path / "p", device="cpu")
    manager = LocalModelManager(settings)
    scan_within(manager, 60)
    assert manager.list() == []
    reasons = {Path(u.path).name: u.reason for u in manager.unrecognized()}
    for name, case in cases.items():
        assert name in reasons, f"{name} not listed: {reasons}"
        assert re.search(case.reason, reasons[name]), (name, reasons[name])
        assert not re.fullmatch(r"'\w+'|list index out of range", reasons[name])
    with pytest.raises(ModelNotFoundError, match=r"'evil' \(.*evil\.ckpt\) was refused: .*needs pickled code"):
        manager.get("evil", kind="main")
    assert not marker.exists() and snapshot(models) == before


# --- the API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(bad):
    root = bad / "server"
    model_files(root / "models", bad / "PWNED-api")
    with api_server(root) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


def test_api_upload_refuses_each_bad_image(http, images, server):
    for name, case in images.items():
        if not case.path.is_file():
            continue  # FIFOs, links and folders cannot be uploaded
        response = http.post("/api/v1/images/", files={"file": (name, case.path.read_bytes(), "image/png")})
        assert response.status_code in (413, 415), (name, response.text)
        body = response.json()
        assert body["field"] == "file" and re.search(case.reason, body["message"]), (name, body)
    assert http.get("/api/v1/health").status_code == 200
    no_traceback(server.log())


def test_api_create_session_refuses_each_bad_document(http, sessions, server):
    for name, case in sessions.items():
        if not case.path.is_file() or case.path.suffix != ".json":
            continue
        if name == "empty.json":  # no body at all: the API's way to ask for an empty session
            assert http.post("/api/v1/sessions", content=b"").json()["graph"]["nodes"] == []
            continue
        response = http.post("/api/v1/sessions/", content=case.path.read_bytes(),
                             headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (name, response.text)
        assert response.json().get("message"), (name, response.text)
    assert http.get("/api/v1/health").status_code == 200
    no_traceback(server.log())


def test_api_metadata_and_thumbnail_refuse_bad_files_in_the_outputs_folder(http, sessions, images, server):
    store = server_outputs(server)
    dropped = {name: case for name, case in {**sessions, **images}.items()
               if case.path.suffix == ".png" and case.path.is_file() and name not in ("no-graph.png",)}
    for index, (name, case) in enumerate(dropped.items()):
        target = store / f"dropped{index}.png"
        shutil.copyfile(case.path, target)
        before = snapshot(store)
        for route in ("metadata", "thumbnail"):
            response = http.get(f"/api/v1/images/{target.name}/{route}")
            if route == "thumbnail" and "graph" in name and response.status_code == 200:
                continue  # an image with a bad graph still has pixels to show
            assert response.status_code == 415, (name, route, response.text)
            message = response.json()["message"]
            assert target.name in message and re.search(case.reason, message), (name, route, message)
        assert snapshot(store) == before
    assert http.get("/api/v1/health").status_code == 200
    no_traceback(server.log())


def test_api_models_answers_with_every_bad_file_listed(http, server, bad):
    response = http.get("/api/v1/models")  # no 307 to /models/ either
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["items"] == []
    listed = {Path(u["path"]).name: u["reason"] for u in body["unrecognized"]}
    assert {"evil.ckpt", "fifo.safetensors", "dangling.safetensors", "no-shape.safetensors"} <= set(listed)
    assert "needs pickled code" in listed["evil.ckpt"]
    assert not (bad / "PWNED-api").exists()
    no_traceback(server.log())


def server_outputs(server) -> Path:
    return Path(server.log_path).parent / "outputs"


def test_generator_makes_what_it_says(bad, sessions, images):
    """The matrix is only as good as its files: the bomb claims 10 gigapixels in a few hundred bytes,
    the FIFO is a FIFO, the pickle payload really runs code when unpickled."""
    import os
    import pickle
    import stat

    from PIL import Image

    bomb = sessions["bomb.png"].path
    assert bomb.stat().st_size < 1000
    with pytest.raises(Image.DecompressionBombError):  # Pillow's own check fires on opening it
        Image.open(bomb)
    assert stat.S_ISFIFO(os.lstat(sessions["fifo.json"].path).st_mode)
    marker = bad / "generator-proof"
    from tests.hostile import pickle_payload

    pickle.loads(pickle_payload(marker))  # what a naive loader would do
    assert marker.exists()
    marker.unlink()
