"""Smoke test of the built desktop app (dist/invoke-nodes/, made by `python packaging/build.py`).

build.py runs it after each build.  Without a build it skips (a fresh CI clone has none), unless
INVOKE_NODES_BUILD=1 asks to build first (needs pyinstaller; 6 to 18 minutes here, see "Desktop
builds" in the README).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from app.canvas.demo import demo_graph
from nodes.discovery import load_builtin_nodes
from services.engine.graph import Graph
from services.engine.session import Session
from services.stores.sessions import write_session_file

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "dist" / "invoke-nodes"
EXE = APP_DIR / ("invoke-nodes-cli.exe" if os.name == "nt" else "invoke-nodes")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
# every folder the app keeps in the user's data dir (services.config.Settings.ensure_dirs)
USER_FOLDERS = ("config", "models", "outputs", "sessions", "plugins", "logs")  # logs: the log file of node tracebacks

PLUGIN = '''
# standard modules the app itself does not use: the build ships the whole standard library for plugins
import csv
import email.mime.text
import sqlite3
import xml.etree.ElementTree
from typing import Literal

from nodes.base import BaseInvocation, InputField
from nodes.outputs import IntOutput


class TripleInvocation(BaseInvocation):
    """Test plugin: three times the input."""

    type: Literal["triple"] = "triple"
    value: int = InputField(1, description="Number to triple")

    def invoke(self, context) -> IntOutput:
        return IntOutput(value=3 * self.value)
'''


@pytest.fixture(scope="module")
def app_exe() -> Path:
    if not EXE.is_file() and os.environ.get("INVOKE_NODES_BUILD") == "1":
        subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "--no-test", "--no-archive"], check=True)
    if not EXE.is_file():
        pytest.skip("no desktop build in dist/invoke-nodes/: `python packaging/build.py` builds it and runs "
                    "this test; INVOKE_NODES_BUILD=1 builds it first (needs pyinstaller, 6-18 min)")
    return EXE


@pytest.fixture(scope="module")
def build_info(app_exe) -> dict:
    return json.loads((APP_DIR / "BUILD-INFO.json").read_text("utf-8"))


def frozen(exe: Path, root: Path, *args: str, timeout: float = 300,
           wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the built app with all its user folders under `root` and nothing from this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "INVOKE_NODES_", "VIRTUAL_ENV"))}
    env["INVOKE_NODES_ROOT"] = str(root)
    return subprocess.run([*wrapper, str(exe), *args], env=env, cwd=root.parent, capture_output=True,
                          text=True, timeout=timeout)


def write_session(path: Path, session: Session) -> Path:
    write_session_file(session, path)
    return path


def test_prints_its_version(app_exe, tmp_path):
    result = frozen(app_exe, tmp_path / "user", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"invoke-nodes {VERSION}"


def test_runs_the_demo_graph_headless_like_the_source_and_creates_the_user_folders(app_exe, tmp_path):
    load_builtin_nodes()
    graph = write_session(tmp_path / "demo.json", Session(Graph.from_dict(demo_graph())))
    root = tmp_path / "user"
    result = frozen(app_exe, root, "run", str(graph), "--out", str(tmp_path / "frozen"))
    assert result.returncode == 0, result.stderr
    written = tmp_path / "frozen" / "show-show_image.png"
    assert result.stdout.splitlines() == [str(written)]
    assert "torch" not in result.stderr.lower(), result.stderr  # no heavy import or warning for utility nodes
    assert sorted(p.name for p in root.iterdir()) == sorted(USER_FOLDERS)  # first run made them

    # the same graph run from the source tree gives the same pixels
    source = subprocess.run([sys.executable, "-m", "app", "run", str(graph), "--out", str(tmp_path / "source")],
                            cwd=ROOT, env={**os.environ, "INVOKE_NODES_ROOT": str(tmp_path / "source-user")},
                            capture_output=True, text=True, timeout=120)
    assert source.returncode == 0, source.stderr
    with Image.open(written) as image, Image.open(tmp_path / "source" / written.name) as expected:
        assert image.size == (256, 256)
        assert ImageChops.difference(image.convert("RGB"), expected.convert("RGB")).getbbox() is None
        # a screen blend of blue over noise: blue everywhere, not a flat fill
        stat = ImageStat.Stat(image.convert("RGB"))
        assert stat.mean[2] > stat.mean[0] and min(stat.stddev) > 5


def test_loads_a_plugin_from_the_user_plugin_folder(app_exe, tmp_path):
    root = tmp_path / "user"
    (root / "plugins").mkdir(parents=True)
    (root / "plugins" / "triple.py").write_text(PLUGIN, "utf-8")
    result = frozen(app_exe, root, "cli", "-c", "triple --value 14")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "triple completed: value=42" in result.stdout


def test_generates_with_torch_and_diffusers_on_the_cpu(app_exe, build_info, tmp_path):
    """Tiny random-weight models: txt2img, then upscale when the variant carries torchvision."""
    root = tmp_path / "user"
    upscaled = "upscale" not in build_info["nodes_missing"]
    if upscaled:  # the build's own make-demo-models (its face restorer model needs torchvision too)
        made = frozen(app_exe, root, "make-demo-models", str(root / "models"))
        assert made.returncode == 0, made.stdout + made.stderr
    else:
        from services.models.demo import write_tiny_sd1_diffusers, write_tiny_sd1_single_file

        write_tiny_sd1_diffusers(root / "models" / "tiny-sd1")
        write_tiny_sd1_single_file(root / "models" / "tiny-sd1-single.safetensors", seed=1)
    load_builtin_nodes()
    session = Session()
    for node_id, model in (("gen", "tiny-sd1"), ("single", "tiny-sd1-single")):  # diffusers folder, single file
        session.add_node({"id": node_id, "type": "txt2img", "model": model, "prompt": "a red fox", "width": 64,
                          "height": 64, "steps": 2, "seed": 11}, [])
    if upscaled:
        session.add_node({"id": "up", "type": "upscale", "model": "tiny-upscaler-x4"}, [("gen", "image", "image")])
    graph = write_session(tmp_path / "gen.json", session)
    result = frozen(app_exe, root, "run", str(graph), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    expected = {"single-txt2img.png": (64, 64)}
    expected.update({"up-upscale.png": (256, 256)} if upscaled else {"gen-txt2img.png": (64, 64)})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for name, size in expected.items():
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == size
            assert max(ImageStat.Stat(image.convert("RGB")).stddev) > 1  # random weights draw noise, not nothing
    # the AI worker process of a frozen build is the program itself, started again (freeze_support)
    result = frozen(app_exe, root, "run", str(graph), "--out", str(tmp_path / "worker"), "--executor", "worker")
    assert result.returncode == 0, result.stderr
    for name in expected:
        with Image.open(tmp_path / "out" / name) as image, Image.open(tmp_path / "worker" / name) as worker:
            assert ImageChops.difference(image.convert("RGB"), worker.convert("RGB")).getbbox() is None


@pytest.mark.gui
def test_opens_the_canvas_under_xvfb_and_draws_the_demo_graph(app_exe, tmp_path):
    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is not installed (apt-get install xvfb xauth)")
    shot = tmp_path / "canvas.png"
    result = frozen(app_exe, tmp_path / "user", "canvas", "--frames", "30", "--run", "--size", "1200x800",
                    "--screenshot", str(shot), timeout=180,
                    wrapper=("xvfb-run", "-a", "-s", "-screen 0 1280x900x24"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "first frame after" in result.stderr
    with Image.open(shot) as image:
        assert image.size == (1200, 800)
        # a drawn window (palette, nodes, text), not a blank or single-colour frame
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def test_the_linux_archive_installs_by_unpacking_into_a_prefix(build_info, tmp_path):
    archive = ROOT / "dist" / f"invoke-nodes-{VERSION}-linux-{platform.machine()}-{build_info['variant']}.tar.gz"
    if not archive.is_file():
        pytest.skip(f"no {archive.name} (build.py --no-archive, or not Linux)")
    wanted = {"share/applications/invoke-nodes.desktop", "share/icons/hicolor/256x256/apps/invoke-nodes.png",
              "bin/invoke-nodes", "lib/invoke-nodes/invoke-nodes", "lib/invoke-nodes/BUILD-INFO.json"}
    found: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(archive) as tar:
        # build.py writes these first, so this reads a few kB, not the whole archive
        for member in tar:
            if member.name in wanted:
                found[member.name] = member
                if member.isfile() and member.size < 1 << 20:
                    tar.extract(member, tmp_path, filter="data")
            if len(found) == len(wanted) or member.name.startswith("lib/invoke-nodes/_internal/"):
                break
    assert set(found) == wanted
    assert found["bin/invoke-nodes"].issym() and found["bin/invoke-nodes"].linkname == "../lib/invoke-nodes/invoke-nodes"
    assert found["lib/invoke-nodes/invoke-nodes"].mode & 0o111  # executable
    entry = (tmp_path / "share/applications/invoke-nodes.desktop").read_text("utf-8").splitlines()
    assert {"Type=Application", "Exec=invoke-nodes canvas %f", "Icon=invoke-nodes", "Terminal=false"} <= set(entry)
    with Image.open(tmp_path / "share/icons/hicolor/256x256/apps/invoke-nodes.png") as icon:
        assert icon.size == (256, 256)
    assert json.loads((tmp_path / "lib/invoke-nodes/BUILD-INFO.json").read_text("utf-8")) == build_info
