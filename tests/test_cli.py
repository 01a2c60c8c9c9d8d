"""The CLI in-process: commands and options from the node schema, atomic pipes, error lines,
session commands and completion.  (The real prompt in a terminal: test_cli_terminal.py.)"""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from app.cli import BAD_INPUT, NODE_FAILED, OK, Quit, Shell
from app.cli_schema import CommandError, command_help, parse_command, split_pipeline
from nodes.base import REGISTRY
from nodes.discovery import load_builtin_nodes

load_builtin_nodes()  # the parsing tests below need the commands without an invoker


@pytest.fixture
def shell(invoker):
    return Shell(invoker, io.StringIO(), io.StringIO(), open_viewer=False)


def out(shell: Shell) -> str:
    return shell.out.getvalue()


def err_lines(shell: Shell) -> list[str]:
    return shell.err.getvalue().splitlines()


def image_of(shell: Shell, node_id: str) -> Image.Image:
    name = shell.session.results[node_id][0].outputs["image"]["image_name"]
    with Image.open(shell.invoker.images.path(name)) as image:
        image.load()
        return image


# --- parsing ------------------------------------------------------------------------------


def test_split_pipeline_respects_quotes_and_escapes():
    line = """string --value "a | b" | string_join --first 'x|y' --second c\\|d | show_image"""
    assert split_pipeline(line) == [["string", "--value", "a | b"], ["string_join", "--first", "x|y", "--second", "c|d"],
                                    ["show_image"]]
    with pytest.raises(CommandError, match="empty command in the pipe"):
        split_pipeline("integer | | integer")


def test_options_come_from_the_ports():
    parsed = parse_command(["resize", "--width=32", "--height", "16", "--resample", "nearest", "--image", "a.png",
                            "--link", "-2", "image", "image", "--no-link", "--id", "r"])
    assert parsed.values == {"width": "32", "height": "16", "resample": "nearest", "image": {"image_name": "a.png"}}
    assert parsed.links == [(-2, "image", "image")]
    assert (parsed.auto_link, parsed.node_id) == (False, "r")


def test_boolean_flags_and_lists():
    assert parse_command(["boolean", "--value"]).values == {"value": "true"}
    assert parse_command(["boolean", "--no-value"]).values == {"value": "false"}
    assert parse_command(["boolean", "--value", "no"]).values == {"value": "no"}
    assert parse_command(["iterate", "--collection", "1, 2,3"]).values == {"collection": ["1", "2", "3"]}
    assert parse_command(["iterate", "--collection", "[1, [2]]"]).values == {"collection": [1, [2]]}


def test_help_shows_every_option_with_type_default_bounds_and_description():
    text = command_help(REGISTRY["resize"], width=200)
    assert text.splitlines()[0] == "resize: Resize an image to a width and height."
    assert "--width INT" in text and "int, default 512, range 1..16384; New width" in text
    assert "--resample {nearest,bilinear,bicubic,lanczos}" in text and "default bicubic; Resampling filter" in text
    assert "image, required, usually linked; Image to resize" in text
    assert "outputs: image (image), width (int), height (int)" in text
    seed_help = command_help(REGISTRY["noise_image"], width=200)
    assert "--seed SEED" in seed_help and "int (seed), default random, range -1..4294967295" in seed_help


def test_help_lists_commands_by_category_and_session_commands(shell):
    assert shell.execute("help") == OK
    text = out(shell)
    for category in {cls.category for cls in REGISTRY.values()}:
        assert f"\n  {category}:\n" in text
    assert text.index("  image:") < text.index("    resize ") < text.index("  math:")
    assert "save FILE" in text and "history" in text


def test_help_cmd_and_cmd_dash_help_print_the_same(shell):
    shell.execute("help crop")
    first = out(shell)
    shell.out.seek(0)
    shell.out.truncate()
    assert shell.execute("noise_image | crop --help") == OK
    assert out(shell) == first and "--x INT" in first
    assert len(shell.session.graph) == 0  # --help adds nothing


# --- adding and running ---------------------------------------------------------------------


def test_pipe_auto_links_and_produces_real_images(shell):
    assert shell.execute("solid_color --width 20 --height 10 --color #ff0000 | scale --factor 0.5 | "
                         "crop --x 1 --y 1 --width 4 --height 3") == OK
    graph = shell.session.graph
    assert [graph.nodes[n].type for n in graph.order] == ["solid_color", "scale", "crop"]
    assert {(l.from_node, l.from_field, l.to_field) for l in graph.links_in["2"]} == {("1", "image", "image")}
    assert image_of(shell, "2").size == (10, 5)
    crop = image_of(shell, "3")
    assert crop.size == (4, 3) and crop.getpixel((0, 0))[:3] == (255, 0, 0)
    stored = shell.invoker.images.path(shell.session.results["3"][0].outputs["image"]["image_name"])
    assert f"[3] crop completed: image={stored}  width=4  height=3" in out(shell).splitlines()


def test_explicit_history_links_and_no_link(shell):
    assert shell.execute("solid_color --width 8 --height 8 --color white | solid_color --width 8 --height 8 --color black"
                         " | blend --link -2 image base --link -1 image top --alpha 0.25") == OK
    links = {(l.from_node, l.from_field, l.to_field) for l in shell.session.graph.links_in["3"]}
    assert links == {("1", "image", "base"), ("2", "image", "top")}
    assert image_of(shell, "3").getpixel((4, 4)) == (191, 191, 191)
    assert shell.execute("resize --no-link --width 4") == BAD_INPUT
    assert err_lines(shell) == ["error: resize --image: required input has neither a value nor a link"]
    assert shell.execute("resize --no-link --link 1 image image --width 4 --height 2") == OK
    assert image_of(shell, "4").size == (4, 2)


def test_a_quoted_pipe_is_a_value(shell):
    assert shell.execute('string --value "cat | sushi" | string_join --link -1 value first --second "x"') == OK
    assert shell.session.results["2"][0].outputs == {"value": "cat | sushi, x"}


@pytest.mark.parametrize("line, message", [
    ("resiz --width 3", "error: unknown command 'resiz' (did you mean resize?); 'help' lists commands"),
    ("noise_image | resize --widht 3",
     "error: resize --widht: unknown option (did you mean --width?); options are --image, --width, --height, "
     "--resample, --link, --no-link, --id, --help"),
    ("noise_image | resize --width wide", "error: resize --width: Input should be a valid integer, unable to parse "
                                          "string as an integer (got 'wide')"),
    ("noise_image | resize --width 0", "error: resize --width: Input should be greater than or equal to 1 (got '0')"),
    ("noise_image | resize --resample fuzzy",
     "error: resize --resample: Input should be 'nearest', 'bilinear', 'bicubic' or 'lanczos' (got 'fuzzy')"),
    ("noise_image | resize --width", "error: resize --width: needs a value (INT)"),
    ("noise_image | resize 32", "error: resize: unexpected argument '32' (values follow an --option)"),
    ("noise_image | resize --width 3 --width 4", "error: resize --width: given twice"),
    ("noise_image | blend --link 9 image base",
     "error: blend --link: link from unknown node '9' (links run from existing nodes)"),
    ("noise_image | blend --link -1 pixels base",
     "error: blend --link: link from node '2' (noise_image): it has no output 'pixels' (outputs are: image, width, height)"),
    ("integer | resize --link -1 value image", "error: resize --link: cannot link int output '2.value' into an image input"),
    ("noise_image | blend --link -3 image base", "error: blend --link: history link -3 reaches before the first node"),
    ("noise_image | blend --link -1 image", "error: blend --link: takes three values: FROM_NODE FROM_FIELD TO_FIELD"),
    ("integer | resize", "error: resize --image: required input has neither a value nor a link"),
    ('string --value "open', "error: cannot read the line: No closing quotation"),
    ("history | new", "error: history: session commands cannot be piped"),
    ("save", "error: save: usage: save FILE"),
    ("integer --id 1", "error: integer --id: a node '1' already exists"),
    ("integer --id=-1", "error: integer --id: give a name or a positive number (negative numbers are history links)"),
])
def test_bad_input_is_one_line_and_leaves_the_session_as_it_was(shell, line, message):
    assert shell.execute("solid_color --width 2 --height 2") == OK  # the session already has a node
    before = json.dumps(shell.session.graph.to_dict())
    assert shell.execute(line) == BAD_INPUT
    assert err_lines(shell)[-1] == message
    assert json.dumps(shell.session.graph.to_dict()) == before


def test_a_failing_node_returns_node_failed_and_names_the_node(shell, tmp_path):
    missing = tmp_path / "in.png"
    assert shell.execute(f"load_image --path {missing} | scale --factor 2") == NODE_FAILED
    assert err_lines(shell) == [f"[1] load_image failed: field 'path': no such file: {missing}",
                                "[2] scale skipped: input node '1' (load_image) failed"]
    # fix the cause and `run` again: the failed node and the one it blocked run now
    Image.new("RGB", (6, 4), (0, 0, 255)).save(missing)
    assert shell.execute("run") == OK
    assert image_of(shell, "2").size == (12, 8)
    assert shell.execute("run") == OK and "nothing to run" in out(shell)


# --- session commands -----------------------------------------------------------------------


def test_history_save_load_new(shell, invoker, tmp_path):
    shell.execute("noise_image --width 8 --height 6 --seed 7 | resize --width 4")
    shell.execute("history")
    rows = out(shell).splitlines()[-2:]
    assert rows[0].split() == ["1", "noise_image", "completed", "--width", "8", "--height", "6", "--seed", "7"]
    assert rows[1].split() == ["2", "resize", "completed", "--width", "4", "links:", "image<-1.image", "height<-1.height"]
    path = tmp_path / "s.json"
    assert shell.execute(f"save {path}") == OK
    assert shell.execute("new") == OK and len(shell.session.graph) == 0
    other = Shell(invoker, io.StringIO(), io.StringIO(), open_viewer=False)
    assert other.execute(f"load {path}") == OK
    assert other.session.graph.to_dict() == json.loads(path.read_text())["graph"]
    assert other.session.node_state("2") == "cached"  # the saved result, its image still here
    assert other.execute(f"load {tmp_path / 'nope.json'}") == BAD_INPUT
    assert err_lines(other) == [f"error: load: {tmp_path / 'nope.json'}: No such file or directory"]
    # a PNG the app made carries its graph
    png = invoker.services.images.path(other.session.results["2"][0].outputs["image"]["image_name"])
    assert other.execute(f"load {png}") == OK and [n.type for n in other.session.graph.nodes.values()] == ["noise_image", "resize"]


def test_load_where_the_images_are_gone_says_stale_and_run_makes_them(shell, elsewhere, tmp_path):
    shell.execute("noise_image --width 8 --height 6 --seed 7 | resize --width 4")
    shell.execute(f"save {tmp_path / 's.json'}")
    sent = np.asarray(image_of(shell, "2"))
    other = Shell(elsewhere(), io.StringIO(), io.StringIO(), open_viewer=False)
    assert other.execute(f"load {tmp_path / 's.json'}") == OK
    assert out(other).splitlines()[-1] == "stale (their images, or their inputs' images, are gone; 'run' makes them again): 1, 2"
    other.execute("history")
    assert [line.split()[2] for line in out(other).splitlines()[-2:]] == ["stale", "stale"]
    assert other.execute("run") == OK
    assert [other.session.node_state(n) for n in ("1", "2")] == ["completed", "completed"]
    assert np.array_equal(np.asarray(image_of(other, "2")), sent)  # same graph, same pixels, in this folder
    assert other.execute("run") == OK and out(other).splitlines()[-1].startswith("nothing to run")
    # deleted by hand while the CLI runs: the next `run` makes it again
    other.invoker.images.path(other.session.results["2"][0].outputs["image"]["image_name"]).unlink()
    assert other.execute("run") == OK
    assert "stale (their images, or their inputs' images, are gone; 'run' makes them again): 2" in out(other)
    assert other.session.node_state("1") == "completed" and np.array_equal(np.asarray(image_of(other, "2")), sent)


def test_set_forks_and_reruns_only_what_changed(shell):
    shell.execute("noise_image --width 8 --height 6 --seed 7 | resize --width 4")
    first = shell.session
    assert shell.execute("set 2.width=3") == OK
    assert shell.session is not first and shell.session.parent_id == first.id
    assert [shell.session.node_state(n) for n in ("1", "2")] == ["cached", "completed"]
    assert image_of(shell, "2").size == (3, 6)
    assert shell.execute("set 2.width=-3") == BAD_INPUT
    assert err_lines(shell) == ["error: set 2.width: Input should be greater than or equal to 1 (got '-3')"]
    assert shell.execute("set 9.width=3") == BAD_INPUT
    assert err_lines(shell)[-1] == "error: set 9.width: no node '9' (nodes are 1, 2)"


def test_quit_and_exit_raise_quit(shell):
    for word in ("quit", "exit"):
        with pytest.raises(Quit):
            shell.execute(word)


# --- completion -----------------------------------------------------------------------------


def test_completion_of_commands_options_and_values(shell, tmp_path):
    assert shell.completions("noise_im", "noise_im") == ["noise_image"]
    assert shell.completions("ra", "ra") == ["random_int", "random_range", "range"]
    assert "history" in shell.completions("h", "h") and "history" not in shell.completions("integer | h", "h")
    assert shell.completions("noise_image | res", "res") == ["resize"]
    assert shell.completions("resize --w", "--w") == ["--width"]
    assert shell.completions("resize --width 3 --", "--") == ["--image", "--height", "--resample", "--link",
                                                               "--no-link", "--id", "--help"]
    assert shell.completions("resize --resample b", "b") == ["bilinear", "bicubic"]
    assert shell.completions("resize --resample=bi", "--resample=bi") == ["--resample=bilinear", "--resample=bicubic"]
    assert shell.completions("boolean --value ", "") == ["true", "false"]
    (tmp_path / "graph.json").write_text("{}")
    assert shell.completions(f"load {tmp_path}/gr", f"{tmp_path}/gr") == [f"{tmp_path}/graph.json"]
    assert shell.completions(f"load_image --path {tmp_path}/g", f"{tmp_path}/g") == [f"{tmp_path}/graph.json"]
    assert shell.completions("nope --", "--") == []


def test_model_options_complete_with_ids_the_model_manager_gives_only_when_asked(shell):
    with_model = [(t, n, p) for t, cls in sorted(REGISTRY.items()) for n, p in cls.inputs().items() if p.kind == "model"]
    if not with_model:
        pytest.skip("no node with a model input is installed")
    node_type, field, port = with_model[0]
    asked = []

    class Models:
        def list(self, kind=None):
            asked.append(kind)
            return [SimpleNamespace(id="b-model"), SimpleNamespace(id="a-model"), SimpleNamespace(id="other")]

    shell.invoker.services.model_manager_factory = lambda settings: Models()
    assert shell.execute(f"help {node_type}") == OK and f"--{field} MODEL" in out(shell)
    assert asked == []  # help and the option list never touch the models folder
    assert shell.completions(f"{node_type} --{field} ", "") == ["a-model", "b-model", "other"]
    assert shell.completions(f"{node_type} --{field} a", "a") == ["a-model"]
    assert asked == [port.model_kind, port.model_kind]
