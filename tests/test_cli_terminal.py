"""The CLI as a user runs it: `python -m app cli` in a pseudo-terminal (pexpect) with readline
completion and history, and `-c LINE` in a subprocess, asserting on the PNGs it writes."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pexpect
import pytest
from PIL import Image

from nodes.base import REGISTRY
from nodes.discovery import load_builtin_nodes

REPO = Path(__file__).resolve().parents[1]
PROMPT = "invoke> "

# A plugin node: proves a new node is a new command with no CLI code, and reports progress.
STEPS_PLUGIN = textwrap.dedent('''
    import time
    from typing import ClassVar, Literal

    from nodes.base import BaseInvocation, InputField
    from nodes.outputs import IntOutput


    class StepsInvocation(BaseInvocation):
        """Count to `steps`, reporting progress at every step."""

        type: Literal["test_steps"] = "test_steps"
        category: ClassVar[str] = "testing"
        steps: int = InputField(4, ge=1, le=50000, description="How many steps")
        delay: float = InputField(0.01, ge=0, le=1, description="Seconds per step")

        def invoke(self, context) -> IntOutput:
            for step in range(1, self.steps + 1):
                time.sleep(self.delay)
                context.progress(step, self.steps, "counting")
            return IntOutput(value=self.steps)
''')


def cli_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY") and not k.startswith("INVOKE_NODES_")}
    env.update(INVOKE_NODES_ROOT=str(root), PYTHONPATH=str(REPO), TERM="xterm", COLUMNS="120", **extra)
    return env


def run_app(root: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd or root.parent, env=cli_env(root, **env),
                          capture_output=True, text=True, timeout=120)


def stored_image(output: str, node_id: str) -> Path:
    match = re.search(rf"^\[{node_id}\] \S+ (?:completed|cached): image=(\S+\.png)", output, re.MULTILINE)
    assert match, f"no image line for node {node_id} in:\n{output}"
    return Path(match.group(1))


def pixels(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "user"


# --- -c ----------------------------------------------------------------------------------------


def test_dash_c_runs_a_pipe_and_writes_real_images(root):
    line = "solid_color --width 40 --height 30 --color #00ff00 | scale --factor 0.5 | show_image"
    result = run_app(root, "cli", "-c", line)
    assert result.returncode == 0, result.stderr
    scaled = stored_image(result.stdout, "2")
    assert scaled.parent == root / "outputs"
    image = pixels(scaled)
    assert image.size == (20, 15) and image.getpixel((10, 7)) == (0, 255, 0)
    # no display: show_image prints the path instead of opening a viewer
    assert f"show_image: {scaled}" in result.stdout.splitlines()


def test_dash_c_exit_codes_and_error_lines(root):
    bad = run_app(root, "cli", "-c", "noise_image | resize --width 0")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: resize --width: Input should be greater than or equal to 1 (got '0')"
    failed = run_app(root, "cli", "-c", "integer --value 7 | math --operation div --link -1 value a")
    assert failed.returncode == 1
    assert failed.stderr.splitlines() == ["[2] math failed: field 'b': division by zero"]
    many = run_app(root, "cli", "-c", "noise_image --width 8 --height 8 --seed 1", "-c", "resize --width 4", "-c", "history")
    assert many.returncode == 0 and "   2  resize         completed  --width 4  links: image<-1.image" in many.stdout


def test_show_image_opens_the_system_viewer_when_there_is_a_display(root, tmp_path):
    bin_dir, opened = tmp_path / "bin", tmp_path / "opened.txt"
    bin_dir.mkdir()
    viewer = bin_dir / "xdg-open"
    viewer.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    viewer.chmod(0o755)
    result = run_app(root, "cli", "-c", "solid_color --width 4 --height 4 | show_image",
                     DISPLAY=":99", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    shown = stored_image(result.stdout, "2")
    for _ in range(100):  # the viewer is started detached
        if opened.exists() and opened.read_text().strip():
            break
        time.sleep(0.05)
    assert opened.read_text().strip() == str(shown)
    assert "show_image:" not in result.stdout


def install_steps_plugin(root: Path) -> None:
    (root / "plugins").mkdir(parents=True)
    (root / "plugins" / "steps.py").write_text(STEPS_PLUGIN)


def test_a_plugin_node_is_a_command_with_help_and_progress_bars(root):
    install_steps_plugin(root)
    listing = run_app(root, "cli", "-c", "help")
    assert "  testing:\n    test_steps" in listing.stdout
    usage = run_app(root, "cli", "-c", "test_steps --help")
    assert "--steps INT" in usage.stdout and "int, default 4, range 1..50000; How many steps" in usage.stdout
    result = run_app(root, "cli", "-c", "test_steps --steps 5")
    assert result.returncode == 0, result.stderr
    assert "[1] test_steps completed: value=5" in result.stdout
    assert re.search(r"\[1\] test_steps: +100%\|.*\| 5/5 .*counting", result.stderr), result.stderr
    out_of_range = run_app(root, "cli", "-c", "test_steps --steps 50001")
    assert out_of_range.stderr.strip() == "error: test_steps --steps: Input should be less than or equal to 50000 (got '50001')"


@pytest.mark.slow
def test_the_seed_line_generates_upscales_and_shows(root):
    """`txt2img ... | upscale | show_image` from the original CLI idea, on tiny random-weight models."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        pytest.skip("torch and diffusers are not installed")
    load_builtin_nodes()
    if not {"txt2img", "upscale"} <= set(REGISTRY):
        pytest.skip("the generation and restoration nodes are not installed")
    models = root / "models"
    write = ("import sys; from pathlib import Path; from services.models.demo import write_tiny_sd1_diffusers; "
             "from services.models.restoration_files import write_tiny_upscaler; folder = Path(sys.argv[1]); "
             "write_tiny_sd1_diffusers(folder / 'tiny-sd1'); write_tiny_upscaler(folder / 'tiny-upscaler-x4.pth')")
    subprocess.run([sys.executable, "-c", write, str(models)], cwd=REPO, env=cli_env(root), check=True, timeout=300)
    line = ('txt2img --model tiny-sd1 --prompt "a cat eating sushi" --steps 2 --seed 1234 --width 64 --height 64'
            " | upscale --model tiny-upscaler-x4 | show_image")
    result = run_app(root, "cli", "-c", line)
    assert result.returncode == 0, result.stderr
    assert pixels(stored_image(result.stdout, "1")).size == (64, 64)
    upscaled = stored_image(result.stdout, "2")
    assert pixels(upscaled).size == (256, 256)
    assert f"show_image: {upscaled}" in result.stdout.splitlines()
    assert re.search(r"\[1\] txt2img: +100%\|.*\| 2/2 .*denoising", result.stderr), result.stderr


def test_the_cli_loads_neither_torch_nor_dearpygui(root):
    script = ("import sys; from app.cli import main; "
              "code = main(['-c', 'noise_image --width 8 --height 8 | resize --width 4 | show_image', '-c', 'help upscale']); "
              "print(code, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'dearpygui', 'diffusers')))")
    result = subprocess.run([sys.executable, "-c", script], cwd=root.parent, env=cli_env(root), capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr


def test_lines_fed_on_stdin_run_as_a_script(root):
    script = "noise_image --width 6 --height 4 --seed 2\nresize --width 0\nresize --width 3\nhistory\n"
    result = subprocess.run([sys.executable, "-m", "app", "cli"], input=script, cwd=root.parent, env=cli_env(root),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # the worst line decides
    assert result.stderr.splitlines() == ["error: resize --width: Input should be greater than or equal to 1 (got '0')"]
    assert pixels(stored_image(result.stdout, "2")).size == (3, 4)
    assert "   2  resize         completed  --width 3" in result.stdout


# --- the interactive prompt --------------------------------------------------------------------


def spawn(root: Path) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "app", "cli"], cwd=str(root.parent), env=cli_env(root),
                          encoding="utf-8", timeout=30, dimensions=(40, 160))
    child.expect_exact(PROMPT)
    return child


def test_prompt_completes_reports_errors_keeps_going_and_remembers_history(root):
    child = spawn(root)
    # Tab completes the command and then the option
    child.send("noise_im\t")
    child.expect_exact("noise_image ")
    child.send("--wi\t")
    child.expect_exact("--width ")
    child.send("16 --height 12 --seed 5\r")
    child.expect(r"\[1\] noise_image completed: image=(\S+\.png)")
    child.expect_exact(PROMPT)
    # two Tabs list the candidates when there are several
    child.send("ran\t\t")
    child.expect("random_int +random_range +range")
    child.send("\x15")  # Ctrl-U: clear the line
    # a bad value: one error line, nothing added, the prompt goes on
    child.send("resize --width 0\r")
    child.expect_exact("error: resize --width: Input should be greater than or equal to 1 (got '0')")
    child.expect_exact(PROMPT)
    child.send("resize --width 8 --height 4\r")
    child.expect(r"\[2\] resize completed: image=(\S+\.png)")
    resized = Path(child.match.group(1))
    child.expect_exact(PROMPT)
    assert pixels(resized).size == (8, 4)
    child.send("history\r")
    child.expect(r"1  noise_image +completed")
    child.expect(r"2  resize +completed +--width 8 --height 4 +links: image<-1.image")
    child.expect_exact(PROMPT)
    child.send("quit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (root / "cli_history").read_text().splitlines()
    assert history[-4:] == ["resize --width 0", "resize --width 8 --height 4", "history", "quit"]

    # a new prompt has the history: Up twice recalls `history`, which shows the new empty session
    child = spawn(root)
    child.send("\x1b[A\x1b[A\r")
    child.expect_exact("the session is empty")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_cancels_the_run_and_the_prompt_goes_on(root):
    install_steps_plugin(root)
    child = spawn(root)
    child.send("test_steps --steps 3000 --delay 0.02\r")
    child.expect(r"\[1\] test_steps: +\d+%")  # the bar is drawn: the node is running
    child.sendintr()
    child.expect_exact("[1] test_steps canceled")
    child.expect_exact("error: canceled with Ctrl-C; 'run' goes on from there")
    child.expect_exact(PROMPT)
    child.send("history\r")
    child.expect(r"1  test_steps +canceled")
    child.expect_exact(PROMPT)
    child.send("set 1.delay=0\r")
    child.expect_exact("[1] test_steps completed: value=3000")
    child.expect_exact(PROMPT)
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
