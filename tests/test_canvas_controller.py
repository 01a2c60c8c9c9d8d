"""The canvas controller without a window: every gesture, through the real engine."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
from PIL import Image

from app.canvas.controller import IDLE, CanvasController, CanvasError, auto_layout
from app.canvas.schema import NONE_CHOICE, TAG_COLOURS, WidgetSpec, coerce, pin_spec, tag_colour, widget_for
from app.canvas.system import detect_device, display_problem
from app.canvas.thumbs import THUMB, fit_rgba
from nodes.base import REGISTRY, BaseInvocation, InputField, Port
from nodes.discovery import load_builtin_nodes
from nodes.outputs import IntOutput
from services.engine.graph import Link

load_builtin_nodes()  # the schema tests read node classes before any invoker exists


@pytest.fixture
def ctl(invoker):
    controller = CanvasController(invoker)
    yield controller
    controller.close()


def pump_until(ctl: CanvasController, done, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ctl.pump()
        if done():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out; message={ctl.message!r} log={list(ctl.log)[-5:]}")


def run_to_end(ctl: CanvasController) -> None:
    assert ctl.run()
    pump_until(ctl, lambda: not ctl.is_running)


# --- schema: pins and widgets come from ports alone ------------------------------------------


def test_widgets_follow_port_kinds():
    resize = REGISTRY["resize"].inputs()
    assert widget_for(resize["width"]) == WidgetSpec("int", min=1, max=16384)
    assert widget_for(resize["resample"]).kind == "combo"
    assert "lanczos" in widget_for(resize["resample"]).choices
    assert widget_for(resize["image"]).kind == "none"  # images arrive by link only
    assert widget_for(REGISTRY["noise_image"].inputs()["seed"]).kind == "seed"
    assert widget_for(REGISTRY["load_image"].inputs()["path"]).kind == "path"
    assert widget_for(REGISTRY["blend"].inputs()["alpha"]).kind == "float"
    assert widget_for(REGISTRY["boolean"].inputs()["value"]).kind == "bool"
    assert coerce(widget_for(resize["width"]), 12.0) == 12 and isinstance(coerce(widget_for(resize["width"]), 12.0), int)


def test_optional_fields_can_be_cleared():
    spec = widget_for(Port("x", "float", "float", False, None, "", "x", ge=0, le=8))
    assert spec.optional and coerce(spec, "") is None and coerce(spec, "2.5") == 2.5
    model = widget_for(Port("vae", "str", "model", False, None, "", "vae", model_kind="vae"))
    assert model.kind == "model" and model.optional and coerce(model, NONE_CHOICE) is None
    assert not widget_for(REGISTRY["resize"].inputs()["width"]).optional


def test_pin_colours_by_type():
    assert tag_colour("image") == TAG_COLOURS["image"]
    assert tag_colour("list[int]") == TAG_COLOURS["int"]
    assert tag_colour("plugin_tag") == tag_colour("plugin_tag") != TAG_COLOURS["any"]
    spec = pin_spec(REGISTRY["collect"].inputs()["item"])
    assert spec.is_list and "collects many links" in spec.description


def test_every_registered_node_gets_pins(ctl):
    """A node type needs no canvas code: every registered one is in the palette and builds."""
    listed = {entry["type"] for group in ctl.palette().values() for entry in group}
    assert listed == set(REGISTRY)
    for node_type in sorted(REGISTRY):
        node_id = ctl.add_node(node_type)
        assert ctl.inputs(node_id) is not None and (ctl.outputs(node_id) or node_type == "note")


def test_palette_search_and_groups(ctl):
    groups = ctl.palette("noise")
    assert [e["type"] for e in groups["image"]] == ["noise_image"]
    assert "primitives" in ctl.palette()
    assert ctl.palette("no such node at all") == {}


def test_thumbnail_is_letterboxed_square():
    data = fit_rgba(Image.new("RGB", (40, 20), (255, 0, 0)), THUMB)
    pixels = data.reshape(THUMB, THUMB, 4)
    assert pixels.shape == (THUMB, THUMB, 4)
    assert pixels[THUMB // 2, THUMB // 2].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert pixels[0, 0, 3] == 0.0  # outside the image: transparent


# --- graph gestures --------------------------------------------------------------------------


def test_add_node_at_position(ctl):
    rev = ctl.revision
    node_id = ctl.add_node("resize", (120, 40), {"width": 64})
    assert ctl.graph.nodes[node_id].type == "resize"
    assert ctl.position(node_id) == [120.0, 40.0]
    assert ctl.value(node_id, "width") == 64 and ctl.value(node_id, "height") == 512
    assert ctl.revision > rev and ctl.dirty
    assert ctl.status[node_id].state == IDLE


def test_add_unknown_type_or_bad_value_is_refused(ctl):
    with pytest.raises(CanvasError, match="nope"):
        ctl.add_node("nope")
    with pytest.raises(CanvasError, match="width"):
        ctl.add_node("resize", values={"width": 0})
    assert ctl.message_is_error and not ctl.graph.nodes


def test_link_accepted_and_marks_input_linked(ctl):
    a, b = ctl.add_node("noise_image"), ctl.add_node("resize")
    assert ctl.connect(a, "image", b, "image")
    assert Link(a, "image", b, "image") in ctl.graph.links
    assert ctl.linked_inputs(b) == {"image"}
    assert ctl.session.parent_id is not None  # a fork


@pytest.mark.parametrize("case, reason", [
    ("type", "cannot link image output"),
    ("twice", "input already has a link"),
    ("cycle", "cycle"),
])
def test_link_refused_with_reason(ctl, case, reason):
    a, b = ctl.add_node("noise_image"), ctl.add_node("resize")
    n = ctl.add_node("integer")
    if case == "type":
        ok = ctl.connect(a, "image", n, "value")
    elif case == "twice":
        assert ctl.connect(a, "image", b, "image")
        ok = ctl.connect(ctl.add_node("solid_color"), "image", b, "image")
    else:
        assert ctl.connect(a, "image", b, "image")
        assert ctl.connect(b, "width", n, "value")
        ok = ctl.connect(n, "value", a, "width")
    links_before = list(ctl.graph.links)
    assert not ok
    assert ctl.message_is_error and ctl.message.startswith("Link refused") and reason in ctl.message
    assert ctl.graph.links == links_before


def test_delete_node_removes_its_links_and_position(ctl):
    a, b, c = ctl.add_node("noise_image"), ctl.add_node("resize"), ctl.add_node("show_image")
    ctl.connect(a, "image", b, "image")
    ctl.connect(b, "image", c, "image")
    ctl.selection = {b}
    assert ctl.delete([b])
    assert b not in ctl.graph.nodes and not ctl.graph.links
    assert b not in ctl.session.ui["positions"] and b not in ctl.status and not ctl.selection


def test_delete_link_and_nodes_is_one_undo_step(ctl):
    a, b, c = ctl.add_node("noise_image"), ctl.add_node("resize"), ctl.add_node("show_image")
    ctl.connect(a, "image", b, "image")
    ctl.connect(b, "image", c, "image")
    assert ctl.delete([a], [Link(b, "image", c, "image")])
    assert list(ctl.graph.nodes) == [b, c] and not ctl.graph.links
    assert ctl.undo()
    assert len(ctl.graph.links) == 2 and a in ctl.graph.nodes
    assert not ctl.delete(["missing"])


def test_value_edit_forks_and_bad_value_is_refused(ctl):
    node_id = ctl.add_node("resize")
    before = ctl.session
    assert ctl.set_value(node_id, "width", 100)
    assert ctl.value(node_id, "width") == 100 and ctl.session.parent_id == before.id
    assert before.graph.nodes[node_id].values.get("width") is None  # the old session is untouched
    assert not ctl.set_value(node_id, "width", 100)  # unchanged: no fork
    assert not ctl.set_value(node_id, "width", -5)
    assert ctl.message_is_error and "width" in ctl.message and ctl.value(node_id, "width") == 100


def test_move_and_undo_redo_across_every_gesture(ctl):
    a = ctl.add_node("noise_image", (0, 0))
    b = ctl.add_node("resize", (300, 0))
    ctl.connect(a, "image", b, "image")
    assert ctl.move({b: (300, 200)})
    assert not ctl.move({b: (300, 200)})  # no change, no undo step
    ctl.set_value(b, "width", 64)
    ctl.delete([a])
    history = []
    while ctl.undo_stack:
        ctl.undo()
        history.append((sorted(ctl.graph.nodes), len(ctl.graph.links), ctl.position(b) if b in ctl.graph.nodes else None,
                        ctl.value(b, "width") if b in ctl.graph.nodes else None))
    assert history == [
        ([a, b], 1, [300.0, 200.0], 64),  # undo delete
        ([a, b], 1, [300.0, 200.0], 512),  # undo value edit
        ([a, b], 1, [300.0, 0.0], 512),  # undo move
        ([a, b], 0, [300.0, 0.0], 512),  # undo link
        ([a], 0, None, None),  # undo add b
        ([], 0, None, None),  # undo add a
    ]
    assert not ctl.undo() and "Nothing to undo" in ctl.message
    while ctl.redo_stack:
        ctl.redo()
    assert sorted(ctl.graph.nodes) == [b] and ctl.position(b) == [300.0, 200.0] and ctl.value(b, "width") == 64


def test_new_edit_clears_redo(ctl):
    ctl.add_node("integer")
    ctl.undo()
    assert ctl.redo_stack
    ctl.add_node("float")
    assert not ctl.redo_stack


# --- running ---------------------------------------------------------------------------------


def test_run_demo_reports_states_and_thumbnail(ctl):
    torch_before = "torch" in sys.modules  # other tests in this process may have loaded it already
    ctl.new_demo()
    assert not ctl.dirty and set(ctl.graph.nodes) == {"size", "noise", "color", "blend", "show"}
    run_to_end(ctl)
    assert {s.state for s in ctl.status.values()} == {"completed"}
    assert ctl.status["show"].image_name and ctl.status["show"].thumb is not None
    assert len(ctl.status["show"].thumb) == THUMB * THUMB * 4
    assert "show" in ctl.take_changed() and not ctl.take_changed()
    assert any("session completed" in line for line in ctl.log)
    assert ("torch" in sys.modules) == torch_before, "the demo graph needs no torch"


def test_only_changed_nodes_rerun(ctl):
    ctl.new_demo()
    run_to_end(ctl)
    ctl.set_value("color", "color", "#ff0000")
    assert ctl.status["noise"].state == IDLE  # a fork starts without results
    run_to_end(ctl)
    states = {n: s.state for n, s in ctl.status.items()}
    assert states == {"size": "cached", "noise": "cached", "color": "completed", "blend": "completed", "show": "completed"}


def test_failed_node_shows_error(ctl):
    node_id = ctl.add_node("resize")  # its image input is not linked
    run_to_end(ctl)
    assert ctl.status[node_id].state == "failed"
    assert "image" in ctl.status[node_id].error and "image" in ctl.last_error
    assert ctl.message_is_error and "1 node(s) failed" in ctl.message


def test_progress_events_update_one_node(ctl, invoker):
    """Progress from the invoker thread lands in the node's status; thumbnails from previews."""
    ctl.new_demo()
    ctl.follow(ctl.session.id)
    from services.engine.events import NODE_PROGRESS, Event

    for step in range(1, 6):
        invoker.services.events.emit(Event(NODE_PROGRESS, ctl.session.id, "blend",
                                           {"step": step, "total": 5, "preview": Image.new("RGB", (8, 8), "white")}))
    ctl.take_changed()
    assert ctl.pump() == 5
    assert ctl.take_changed() == {"blend"}
    status = ctl.status["blend"]
    assert (status.state, status.step, status.total, status.fraction) == ("running", 5, 5, 1.0)
    assert status.thumb is not None


def test_seed_randomize_picks_new_seed_per_run(ctl):
    ctl.new_demo()
    ctl.set_randomize("noise", "seed", True)
    assert ctl.randomized("noise", "seed")
    seeds = set()
    for _ in range(3):
        run_to_end(ctl)
        seeds.add(ctl.value("noise", "seed"))
    assert len(seeds) == 3
    ctl.set_randomize("noise", "seed", False)
    run_to_end(ctl)
    assert ctl.value("noise", "seed") in seeds


def test_cancel_stops_a_run(ctl, invoker):
    class SlowInvocation(BaseInvocation):
        """Counts slowly (a stand-in for a denoise loop)."""

        type: Literal["test_canvas_slow"] = "test_canvas_slow"
        category: ClassVar[str] = "test"
        cacheable: ClassVar[bool] = False
        steps: int = InputField(200)

        def invoke(self, context) -> IntOutput:
            for step in range(self.steps):
                context.progress(step + 1, self.steps)
                time.sleep(0.02)
            return IntOutput(value=self.steps)

    try:
        node_id = ctl.add_node("test_canvas_slow")
        assert ctl.run()
        assert not ctl.run() and "Already running" in ctl.message
        pump_until(ctl, lambda: ctl.status[node_id].step >= 2)
        assert ctl.running_node == node_id and ctl.status[node_id].state == "running"
        assert ctl.cancel()
        pump_until(ctl, lambda: not ctl.is_running)
        assert ctl.message == "Canceled" and ctl.status[node_id].state == "canceled"
        assert not ctl.cancel()
    finally:
        REGISTRY.pop("test_canvas_slow", None)


# --- files -----------------------------------------------------------------------------------


def test_save_open_round_trip_keeps_positions(ctl, tmp_path):
    ctl.new_demo()
    ctl.move({"show": (999, 111)})
    ctl.set_value("blend", "alpha", 0.25)
    assert not ctl.save()  # no path yet: the view asks for one
    path = tmp_path / "graph.json"
    assert ctl.save(path) and not ctl.dirty and ctl.path == path
    graph, positions = ctl.graph.to_dict(), dict(ctl.session.ui["positions"])
    ctl.new_demo()
    assert ctl.open(path)
    assert ctl.graph.to_dict() == graph and ctl.session.ui["positions"] == positions
    assert ctl.position("show") == [999.0, 111.0] and not ctl.undo_stack and not ctl.dirty
    assert ctl.settings.recent_files[0] == str(path.resolve())


def test_open_restores_result_thumbnails(ctl, tmp_path):
    ctl.new_demo()
    run_to_end(ctl)
    ctl.save(tmp_path / "ran.json")
    ctl.new_demo()
    assert ctl.status["show"].image_name is None
    assert ctl.open(tmp_path / "ran.json")
    assert ctl.status["show"].state == "cached" and ctl.status["show"].thumb is not None  # its image is still here


def test_open_where_the_images_are_gone_shows_stale_and_run_brings_the_thumbnails(ctl, elsewhere, tmp_path):
    ctl.new_demo()
    run_to_end(ctl)
    sent = ctl.status["show"].thumb
    ctl.save(tmp_path / "sent.json")
    other = CanvasController(elsewhere())  # another machine: a fresh user folder
    try:
        assert other.open(tmp_path / "sent.json")
        assert {n: s.state for n, s in other.status.items()} == {
            "size": "cached", "noise": "stale", "color": "stale", "blend": "stale", "show": "stale"}
        assert other.status["show"].thumb is None and other.status["show"].image_name is None
        assert other.message.endswith("; 4 node(s) stale, their images are not here: Run makes them again")
        assert other.run() and {other.status[n].state for n in ("noise", "color", "blend", "show")} == {"queued"}
        pump_until(other, lambda: not other.is_running)
        assert {n: s.state for n, s in other.status.items()} == {
            "size": "cached", "noise": "completed", "color": "completed", "blend": "completed", "show": "completed"}
        assert np.array_equal(other.status["show"].thumb, sent)  # the same pixels as where it was saved
        assert other.invoker.images.exists(other.status["show"].image_name)
        # an image deleted while the app runs: Run queues its node and the ones after it, and redoes them
        gone = other.status["blend"].image_name
        other.invoker.images.delete(gone)
        assert other.run()
        assert [other.status[n].state for n in ("noise", "blend", "show")] == ["completed", "queued", "queued"]
        pump_until(other, lambda: not other.is_running)
        assert [other.status[n].state for n in ("noise", "blend", "show")] == ["completed", "completed", "completed"]
        assert other.status["show"].image_name != gone and np.array_equal(other.status["show"].thumb, sent)
        assert other.invoker.images.exists(other.status["show"].image_name)
    finally:
        other.close()


@pytest.mark.parametrize("content, reason", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"format": "invoke-nodes/session", "schema_version": 99}).encode(), "newer"),
    (json.dumps({"format": "invoke-nodes/session", "schema_version": 1,
                 "graph": {"nodes": [{"id": "1", "type": "no_such_node"}]}}).encode(), "no_such_node"),
    (b"\x89PNG\r\n\x1a\nbroken", "not an image"),
])
def test_bad_file_keeps_current_graph(ctl, tmp_path, content, reason):
    ctl.new_demo()
    ctl.set_value("blend", "alpha", 0.1)
    before, session = ctl.graph.to_dict(), ctl.session
    path = tmp_path / ("bad.png" if content.startswith(b"\x89PNG") else "bad.json")
    path.write_bytes(content)
    assert not ctl.open(path)
    assert ctl.session is session and ctl.graph.to_dict() == before and ctl.dirty
    assert ctl.message_is_error and str(path) in ctl.message and reason in ctl.message


def test_load_graph_from_png_made_by_the_app(ctl, invoker):
    ctl.new_demo()
    run_to_end(ctl)
    png = invoker.services.images.path(ctl.status["show"].image_name)
    ctl.add_node("integer")
    assert ctl.open(png)
    assert set(ctl.graph.nodes) == {"size", "noise", "color", "blend", "show"}
    assert ctl.path is None  # Ctrl+S must not write JSON over the PNG
    positions = ctl.session.ui["positions"]
    assert positions["size"][0] < positions["noise"][0] < positions["blend"][0] < positions["show"][0]


def test_auto_layout_columns_follow_links(ctl):
    ctl.new_demo()
    layout = auto_layout(ctl.graph, ctl.graph.order)
    assert layout["size"][0] < layout["noise"][0] == layout["color"][0] < layout["blend"][0]
    assert layout["noise"][1] != layout["color"][1]


def test_settings_persist(ctl, tmp_path):
    ctl.update_settings(models_dir=str(tmp_path / "models"), theme="light")
    from services.config import Settings

    saved = Settings.load()
    assert saved.models_dir == tmp_path / "models" and saved.theme == "light"


def test_model_choices_arrive_from_the_invoker_in_the_background(ctl, invoker, monkeypatch):
    header = json.dumps({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         {"dtype": "F16", "shape": [320, 768], "data_offsets": [0, 0]}}).encode()
    (invoker.settings.models_dir / "sd15.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    revision = ctl.revision
    assert ctl.model_choices("main") == []  # asked now, on another thread: the render thread never waits
    pump_until(ctl, lambda: ctl.revision > revision)  # the arrival re-syncs the view
    assert ctl.model_choices("main") == ["sd15"] and ctl.model_choices("vae") == []

    def broken(kind=None):
        raise RuntimeError("no models folder")

    monkeypatch.setattr(invoker, "list_models", broken)
    revision = ctl.revision
    ctl.refresh_models()
    pump_until(ctl, lambda: ctl.revision > revision)
    assert ctl.model_choices("main") == [] and "cannot list models: no models folder" in list(ctl.log)[-1]


def test_viewer_image_and_export(ctl, tmp_path):
    ctl.new_demo()
    run_to_end(ctl)
    name = ctl.status["show"].image_name
    assert ctl.load_image(name).size == (256, 256)
    assert ctl.export_image(name, tmp_path / "copy")  # ".png" is added
    assert (tmp_path / "copy.png").read_bytes() == ctl.invoker.images.path(name).read_bytes()
    assert ctl.load_image("missing.png") is None and "missing.png" in ctl.message
    (tmp_path / "a-file").write_text("")
    assert not ctl.export_image(name, tmp_path / "a-file" / "dir.png") and ctl.message_is_error


def test_display_and_device_detection(monkeypatch):
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    assert "DISPLAY is not set" in display_problem()
    monkeypatch.setenv("DISPLAY", ":987")  # no X server there
    assert "cannot open display ':987'" in display_problem()
    assert detect_device("cpu") == "CPU" and detect_device("cuda:1") == "GPU (cuda:1)"
    assert detect_device("auto") in ("CPU", "GPU (CUDA)", "GPU (MPS)")


def test_every_example_opens_laid_out_and_unsaved(ctl):
    from app.examples import examples

    shipped = examples()
    assert {e.name for e in shipped} == {"hires_fix", "lora_stack", "sdxl_base_refiner", "outpaint", "controlnet"}
    for item in shipped:
        ctl.open_example(item.name)
        assert set(ctl.graph.nodes) == {n["id"] for n in item.graph["nodes"]}
        assert set(ctl.session.ui["positions"]) == set(ctl.graph.nodes) and ctl.path is None


def test_embeddings_found_are_listed_as_prompts_name_them(ctl, services):
    from services.models.demo import write_tiny_embedding

    write_tiny_embedding(Path(services.settings.models_dir) / "embeddings" / "shiny.pt")
    ctl.refresh_models()
    pump_until(ctl, lambda: ctl.embedding_names() == ["shiny"])


# --- issue 14: the gestures ComfyUI and InvokeAI users reach for -------------------------------


def test_copy_paste_duplicate_keep_inner_links(ctl):
    ctl.new_demo()
    assert ctl.select_all() == set(ctl.graph.nodes)
    ctl.selection = {"noise", "blend", "show"}
    text = ctl.copy()
    assert json.loads(text)["format"] == "invoke-nodes/nodes"
    links_before = len(ctl.graph.links)
    added = ctl.paste(text, at=(2000, 500))
    assert len(added) == 3 and ctl.selection == set(added)
    types = sorted(ctl.graph.nodes[n].type for n in added)
    assert types == ["blend", "noise_image", "show_image"]
    inner = [l for l in ctl.graph.links if l.from_node in added and l.to_node in added]
    assert len(inner) == 2 and len(ctl.graph.links) == links_before + 2  # links from outside are not copied
    assert min(ctl.position(n)[0] for n in added) == 2000 and min(ctl.position(n)[1] for n in added) == 500
    noise_copy = next(n for n in added if ctl.graph.nodes[n].type == "noise_image")
    assert ctl.value(noise_copy, "seed") == ctl.value("noise", "seed") == 1234
    assert ctl.undo() and not set(added) & set(ctl.graph.nodes)  # one undo step
    dup = ctl.duplicate(["blend"])
    assert len(dup) == 1 and ctl.position(dup[0]) == [ctl.position("blend")[0] + 40, ctl.position("blend")[1] + 40]
    assert ctl.paste("not json") == [] and "clipboard" in ctl.message


def test_paste_into_another_window(ctl, invoker):
    """Two windows of the app share nodes through the system clipboard as JSON text."""
    ctl.new_demo()
    text = ctl.copy(["size", "noise"])
    other = CanvasController(invoker)
    try:
        added = other.paste(text, at=(0, 0))
        assert len(added) == 2 and len(other.graph.links) == 1
    finally:
        other.close()


def test_new_nodes_land_on_free_space(ctl):
    ctl.new_demo()
    x, y = ctl.position("blend")
    node_id = ctl.add_node("blend", (x + 5, y + 5), place=True)
    from app.canvas.controller import overlaps

    mine = ctl.node_rect(node_id)
    assert not any(overlaps(mine, ctl.node_rect(n)) for n in ctl.graph.nodes if n != node_id)


def test_auto_layout_never_overlaps(ctl):
    """A PNG without positions (or from an older version) is laid out with no node over another."""
    ctl.new_demo()
    for _ in range(4):
        ctl.add_node("txt2img")
    from app.canvas.controller import estimate_size, overlaps

    layout = auto_layout(ctl.graph, ctl.graph.order)
    rects = {n: (*layout[n], *estimate_size(ctl.node_class(n))) for n in ctl.graph.order}
    for a in rects:
        for b in rects:
            assert a == b or not overlaps(rects[a], rects[b]), (a, b)


def test_png_keeps_node_positions(ctl, tmp_path):
    ctl.new_demo()
    ctl.move({"show": (1234, 321)})
    run_to_end(ctl)
    name = ctl.status["show"].image_name
    assert ctl.open(ctl.invoker.images.path(name))
    assert ctl.position("show") == [1234, 321] and ctl.position("noise") == [235, 10]


def test_open_messages_name_the_file_once(ctl, tmp_path):
    assert not ctl.open(tmp_path / "missing.json")
    assert ctl.message.count("missing.json") == 1 and "No such file or directory" in ctl.message
    assert not ctl.open(tmp_path / "missing.png") and "not an image" not in ctl.message
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert not ctl.open(tmp_path / "bad.png") and ctl.message.count("bad.png") == 1


def test_model_inputs_start_with_the_first_model(ctl, invoker):
    header = json.dumps({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                         {"dtype": "F16", "shape": [320, 768], "data_offsets": [0, 0]}}).encode()
    (invoker.settings.models_dir / "sd15.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    ctl.model_choices("main")
    pump_until(ctl, lambda: ctl.model_choices("main") != [])
    node_id = ctl.add_node("txt2img")
    assert ctl.value(node_id, "model") == "sd15"


def test_link_drop_search_and_add_linked(ctl):
    ctl.new_demo()
    types = ctl.compatible_types("noise", "image")
    assert {"resize", "blend", "show_image", "reroute", "upscale"} <= types and "integer" not in types
    assert ctl.palette("", types) and all(e["type"] in types for g in ctl.palette("", types).values() for e in g)
    node_id = ctl.add_linked("resize", (900, 400), "noise", "image")
    assert any(l.from_node == "noise" and l.to_node == node_id and l.to_field == "image" for l in ctl.graph.links)
    # from an input: a node with a compatible output feeds it
    assert "integer" in ctl.compatible_types("noise", "width", output=False)
    source = ctl.add_linked("integer", (0, 400), "noise", "height", output=False)
    assert any(l.from_node == source and l.to_node == "noise" and l.to_field == "height" for l in ctl.graph.links)


def test_reroute_passes_types_through_and_insert_on_link(ctl):
    ctl.new_demo()
    link = next(l for l in ctl.graph.links if l.to_node == "show")
    reroute = ctl.insert_reroute(link, (900, 300))
    assert link not in ctl.graph.links
    assert ctl.graph.output_tag(reroute, "value") == "image"  # narrowed from its input
    assert {(l.from_node, l.to_node) for l in ctl.graph.links} >= {("blend", reroute), (reroute, "show")}
    run_to_end(ctl)
    assert ctl.status["show"].state == "completed" and ctl.status["show"].image_name
    assert ctl.undo() and link in ctl.graph.links and reroute not in ctl.graph.nodes  # one undo step
    note = ctl.add_node("note", (0, 600), {"text": "try a higher alpha"})
    assert ctl.value(note, "text") == "try a higher alpha" and not ctl.outputs(note)


def test_groups_move_their_nodes(ctl):
    ctl.new_demo()
    index = ctl.add_group(["noise", "color"], "inputs")
    group = ctl.groups[index]
    assert group["title"] == "inputs" and set(ctl.group_members(index)) == {"noise", "color"}
    before = {n: ctl.position(n) for n in ctl.graph.nodes}
    rect = list(group["rect"])
    assert ctl.move_group(index, 100, 50)
    assert ctl.position("noise") == [before["noise"][0] + 100, before["noise"][1] + 50]
    assert ctl.position("blend") == before["blend"] and ctl.groups[index]["rect"][:2] == [rect[0] + 100, rect[1] + 50]
    assert ctl.undo() and ctl.position("noise") == before["noise"] and ctl.groups[index]["rect"] == rect
    ctl.set_group(index, collapsed=True, colour=(200, 90, 90))
    assert ctl.hidden_nodes() == {"noise", "color"} and ctl.groups[index]["colour"] == [200, 90, 90]
    x, y, w, h = ctl.groups[index]["rect"]
    assert ctl.group_at((x + 5, y + 5)) == index and ctl.group_at((x + 5, y + h - 2)) is None
    ctl.delete_group(index)
    assert not ctl.groups and ctl.hidden_nodes() == set()


def test_run_to_here_runs_only_what_the_node_needs(ctl):
    ctl.new_demo()
    assert ctl.ancestors(["noise"]) == {"noise", "size"}
    assert ctl.run_to_here(["noise"])
    pump_until(ctl, lambda: not ctl.is_running)
    states = {n: ctl.status[n].state for n in ctl.graph.nodes}
    assert states["noise"] == "completed" and states["size"] == "completed"
    assert states["blend"] == IDLE and states["show"] == IDLE and states["color"] == IDLE
    assert ctl.message.startswith("Finished")


def test_run_n_times_queues_runs_with_new_seeds(ctl):
    ctl.new_demo()
    assert ctl.run(times=3)
    assert [e.label for e in ctl.queue] == ["run 1/3", "run 2/3", "run 3/3"]
    pump_until(ctl, lambda: not ctl.is_running, timeout=60)
    assert [e.state for e in ctl.queue] == ["completed"] * 3 and all(e.seconds is not None for e in ctl.queue)
    seeds = {ctl.invoker.get_session(e.session_id).graph.nodes["noise"].values["seed"] for e in ctl.queue}
    assert len(seeds) == 3
    images = [g.image_name for g in ctl.gallery]
    assert len(images) >= 3 and len(set(images)) == len(images)  # newest first, no repeats
    assert ctl.gallery[0].made >= ctl.gallery[-1].made
    assert ctl.image_path(images[0]).is_file()
    node_id = ctl.add_image_node(images[0], (0, 900))
    assert ctl.graph.nodes[node_id].type == "load_image" and ctl.value(node_id, "path").endswith(images[0])


def test_queue_pause_reorder_cancel_entry(ctl, invoker):
    ctl.new_demo()
    ctl.pause_queue(True)
    try:
        assert ctl.run(times=3) and ctl.queue_paused
        ids = [e.session_id for e in ctl.queue]
        assert invoker.queued() == ids
        assert ctl.move_queued(ids[2], -2)
        assert invoker.queued() == [ids[2], ids[0], ids[1]] and [e.session_id for e in ctl.queue] == invoker.queued()
        assert ctl.cancel(ids[0])
        pump_until(ctl, lambda: ctl.queue[1].state == "canceled")
    finally:
        ctl.pause_queue(False)
    pump_until(ctl, lambda: not ctl.is_running, timeout=60)
    assert [e.state for e in ctl.queue] == ["completed", "canceled", "completed"]


def test_bypass_passes_the_input_through(ctl):
    ctl.new_demo()
    run_to_end(ctl)
    blend_image = ctl.status["blend"].image_name
    assert ctl.set_bypass(["blend"], True) and ctl.bypassed("blend")
    run_to_end(ctl)
    session = ctl.session
    noise_image = session.outputs("noise")[0]["image"]["image_name"]
    assert session.outputs("blend")[0]["image"]["image_name"] == noise_image != blend_image  # the base passed on
    assert session.outputs("show")[0]["image"]["image_name"] == noise_image
    assert ctl.undo() and not ctl.bypassed("blend")


def test_last_error_clears_and_counts_failed_apart_from_skipped(ctl):
    bad = ctl.add_node("resize")  # its image input is not linked: fails
    show = ctl.add_node("show_image")
    assert ctl.connect(bad, "image", show, "image")
    run_to_end(ctl)
    assert ctl.message.endswith("1 node(s) failed, 1 skipped") and ctl.last_error
    ctl.delete([bad, show])
    ctl.add_node("integer")
    run_to_end(ctl)
    assert ctl.last_error is None and not ctl.message_is_error


def test_cancel_is_no_error(ctl):
    ctl.new_demo()
    from services.engine.events import NODE_FAILED, Event

    ctl.follow(ctl.session.id)
    ctl.invoker.services.events.emit(Event(NODE_FAILED, ctl.session.id, "blend", {"state": "canceled", "error": "canceled"}))
    ctl.pump()
    assert ctl.status["blend"].state == "canceled" and ctl.status["blend"].error is None and ctl.last_error is None


def test_last_workflow_restored(ctl, invoker):
    ctl.new_demo()
    assert not CanvasController(invoker).restore_last_workflow()  # the very first start: the demo
    ctl.set_value("noise", "scale", 7)
    ctl.save_last_workflow()
    again = CanvasController(invoker)
    try:
        assert again.restore_last_workflow() and again.value("noise", "scale") == 7
        assert again.position("show") == ctl.position("show") and "Restored" in again.message
    finally:
        again.close()


def test_viewport_zoom_about_the_cursor_and_fit():
    from app.canvas.controller import Viewport

    view = Viewport()
    cursor = (400.0, 300.0)
    model_under_cursor = view.to_model(cursor)
    assert view.step(-2, cursor) and view.zoom == 0.65
    assert view.to_grid(model_under_cursor) == pytest.approx(list(cursor))  # the point under the cursor stays
    assert view.to_model(view.to_grid((123, 456))) == pytest.approx([123, 456])
    for _ in range(10):
        view.step(-1, cursor)
    assert view.zoom == 0.25 and view.collapsed and not view.step(-1, cursor)
    view.fit([(0, 0, 200, 100), (3000, 1000, 200, 300)], (0, 0, 1000, 600))
    corners = [view.to_grid((0, 0)), view.to_grid((3200, 1300))]
    assert all(0 <= x <= 1000 and 0 <= y <= 600 for x, y in corners)
    view.fit([(0, 0, 100, 100)], (0, 0, 1000, 600))
    assert view.zoom == 1.0  # a small graph is not blown up


def test_start_opens_the_file_else_the_last_workflow_else_the_demo(ctl, invoker, tmp_path):
    from app.canvas.main import open_start

    open_start(ctl, None)  # the very first start
    assert set(ctl.graph.nodes) == {"size", "noise", "color", "blend", "show"}
    ctl.delete(["show"])
    ctl.save_last_workflow()
    again = CanvasController(invoker)
    try:
        open_start(again, None)
        assert "show" not in again.graph.nodes and "blend" in again.graph.nodes
        open_start(again, str(tmp_path / "gone.json"))  # a file that cannot be opened: the demo, and why
        assert "show" in again.graph.nodes and "gone.json" in again.last_error
    finally:
        again.close()


def test_the_status_bar_says_what_a_cluster_does(invoker, monkeypatch):
    from app.canvas.controller import cluster_line

    assert cluster_line({"executor": "worker", "workers": []}) is None  # nodes run on this machine
    answers = [{"executor": "ray", "workers": [{"id": 0, "state": "busy"}, {"id": 1, "state": "idle"},
                                               {"id": 2, "state": "unavailable"}]}]
    monkeypatch.setattr(invoker, "cluster", lambda: answers[-1])
    invoker.settings.cluster = "local:3"
    ctl = CanvasController(invoker)
    try:
        pump_until(ctl, lambda: ctl.cluster_line is not None)
        assert ctl.cluster_line == "Cluster: 3 workers, 1 busy, 1 unavailable"

        def lost():
            raise ConnectionError("ray://10.0.0.9:10001 is gone")

        monkeypatch.setattr(invoker, "cluster", lost)
        pump_until(ctl, lambda: "not answering" in ctl.cluster_line, timeout=10)
        assert ctl.cluster_line == "Cluster: not answering (ray://10.0.0.9:10001 is gone)"
    finally:
        ctl.close()
