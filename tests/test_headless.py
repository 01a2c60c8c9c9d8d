"""`invoke-nodes run FILE`: saved sessions and PNG-embedded graphs run headless in a subprocess,
with --set, --out, the written images and the exit codes."""
from __future__ import annotations

from pathlib import Path

import pytest

from nodes.discovery import load_builtin_nodes
from services.engine.session import Session
from services.stores.sessions import write_session_file
from tests.test_cli_terminal import pixels, run_app


load_builtin_nodes()  # the session files below are built in-process


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "user"


def saved(path: Path, nodes: list[tuple[dict, list]]) -> Path:
    """Write a session file of (node, links) pairs, added in order like the CLI adds them."""
    session = Session()
    for data, links in nodes:
        session.add_node(data, links)
    write_session_file(session, path)
    return path


RED_THEN_SCALED = [({"type": "solid_color", "width": 10, "height": 8, "color": "#ff0000"}, []),
                   ({"type": "scale", "factor": 2}, [(-1, "image", "image")])]


def test_run_with_set_and_out_writes_the_result_images(root, tmp_path):
    graph = saved(tmp_path / "graph.json", RED_THEN_SCALED)
    out = tmp_path / "results"
    result = run_app(root, "run", str(graph), "--set", "2.factor=0.5", "--set", "1.color=#0000ff", "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = out / "2-scale.png"
    assert result.stdout.splitlines() == [str(written)]
    image = pixels(written)
    assert image.size == (5, 4) and image.getpixel((2, 2)) == (0, 0, 255)
    assert sorted(p.name for p in out.iterdir()) == ["2-scale.png"]  # only the end of the graph
    assert "[1] solid_color completed" in result.stderr and "[2] scale completed" in result.stderr
    # --all copies every node's images
    every = run_app(root, "run", str(graph), "--all", "--out", str(tmp_path / "all"))
    assert every.returncode == 0 and sorted(p.name for p in (tmp_path / "all").iterdir()) == ["1-solid_color.png", "2-scale.png"]
    assert pixels(tmp_path / "all" / "2-scale.png").size == (20, 16)


def test_run_defaults_to_outputs_in_the_working_folder_and_reads_png_graphs(root, tmp_path):
    graph = saved(tmp_path / "graph.json", RED_THEN_SCALED)
    work = tmp_path / "work"
    work.mkdir()
    first = run_app(root, "run", str(graph), cwd=work)
    assert first.returncode == 0, first.stderr
    produced = work / "outputs" / "2-scale.png"
    assert first.stdout.splitlines() == ["outputs/2-scale.png"] and pixels(produced).size == (20, 16)
    # the PNG carries its graph: running it makes the same image again
    again = run_app(root, "run", str(produced), "--set", "2.factor=3", "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    image = pixels(tmp_path / "again" / "2-scale.png")
    assert image.size == (30, 24) and image.getpixel((0, 0)) == (255, 0, 0)


def test_a_failing_node_exits_1_naming_the_node_and_the_reason(root, tmp_path):
    graph = saved(tmp_path / "bad.json", [({"type": "integer", "value": 3}, []),
                                          ({"type": "math", "operation": "mod"}, [(-1, "value", "a")]),
                                          ({"type": "math", "operation": "add", "b": 1}, [(-1, "value", "a")])])
    result = run_app(root, "run", str(graph), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "invoke-nodes run: node '2' (math) failed: field 'b': division by zero"
    assert "[3] math skipped: input node '2' (math) failed" in result.stderr
    assert result.stdout == ""
    fixed = run_app(root, "run", str(graph), "--set", "2.b=2", "--out", str(tmp_path / "out"))
    assert fixed.returncode == 0, fixed.stderr
    assert "[3] math completed: value=2" in fixed.stderr


@pytest.mark.parametrize("args, message", [
    (["missing.json"], "invoke-nodes run: missing.json: No such file or directory"),
    (["corrupt.json"], "invoke-nodes run: corrupt.json: not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (["graph.json", "--set", "2.factor=0"],
     "invoke-nodes run: --set 2.factor: Input should be greater than or equal to 0.01 (got '0')"),
    (["graph.json", "--set", "2.zoom=2"],
     "invoke-nodes run: --set 2.zoom: scale has no input 'zoom' (inputs are image, factor, resample)"),
    (["graph.json", "--set", "2.factor"], "invoke-nodes run: --set: expected NODE.FIELD=VALUE, got '2.factor'"),
])
def test_bad_files_and_arguments_exit_2_with_one_line(root, tmp_path, args, message):
    saved(tmp_path / "graph.json", RED_THEN_SCALED)
    (tmp_path / "corrupt.json").write_text("")
    result = run_app(root, "run", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "outputs").exists()


def test_every_image_of_a_fanned_out_result_is_written(root, tmp_path):
    graph = saved(tmp_path / "fan.json", [({"type": "range", "start": 1, "stop": 4}, []),
                                          ({"type": "iterate"}, [(-1, "collection", "collection")]),
                                          ({"type": "solid_color", "height": 2}, [(-1, "item", "width")]),
                                          ({"type": "collect"}, [(-1, "image", "item")])])
    result = run_app(root, "run", str(graph), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = [tmp_path / "out" / f"4-collect-{n}.png" for n in range(3)]
    assert result.stdout.splitlines() == [str(p) for p in written]
    assert [pixels(p).size for p in written] == [(1, 2), (2, 2), (3, 2)]
    assert "[3] solid_color #2 completed" in result.stderr
