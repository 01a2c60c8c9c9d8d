"""The canvas in a real Dear PyGui window under Xvfb (Mesa software OpenGL).

Each scenario runs in its own process (this file run as a script), on an Xvfb this test starts:
Dear PyGui keeps one context per process and a crash must fail one test, not the session.
The script writes a JSON report and screenshots that the tests assert on (real pixels).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from app.canvas.system import start_virtual_display
from nodes.base import REGISTRY, BaseInvocation, InputField
from nodes.outputs import IntOutput

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gui
SIZE = (1400, 860)


# --- the pytest side ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xdisplay():
    started = start_virtual_display(SIZE[0], SIZE[1] + 40)
    if started is None:
        pytest.skip("Xvfb not found or did not start: apt-get install -y xvfb xauth libgl1-mesa-dri")
    proc, display = started
    yield display
    proc.terminate()
    proc.wait(10)


def scenario(name: str, display: str, tmp_path: Path, timeout: float = 240, models: Path | None = None) -> dict:
    env = {**os.environ, "DISPLAY": display, "INVOKE_NODES_ROOT": str(tmp_path / "user"), "PYTHONPATH": str(ROOT)}
    for key in ("INVOKE_NODES_MODELS", "INVOKE_NODES_PLUGINS", "INVOKE_NODES_OUTPUTS"):
        env.pop(key, None)
    if models is not None:
        env["INVOKE_NODES_MODELS"] = str(models)
    done = subprocess.run([sys.executable, __file__, name, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"scenario {name} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads((tmp_path / "report.json").read_text())


def region(png: Path, rect: list[list[float]]):
    from PIL import Image

    image = Image.open(png).convert("RGB")
    (x0, y0), (x1, y1) = rect
    return image.crop((int(x0), int(y0), int(x1), int(y1)))


def test_demo_runs_and_preview_shows_result(xdisplay, tmp_path):
    report = scenario("demo", xdisplay, tmp_path)
    assert report["states"] == {n: "completed" for n in ("size", "noise", "color", "blend", "show")}
    assert report["texture_alpha"] > 0.9  # the texture received the image (opaque pixels)
    assert not report["torch"]
    shot = tmp_path / "demo.png"
    preview = region(shot, report["preview_rect"])
    assert preview.width >= 100 and preview.height >= 100
    colours = preview.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 200, "the preview region is blank"  # noise: many colours
    extrema = preview.getextrema()
    assert all(high - low > 80 for low, high in extrema)
    # the editor background right of the graph is not the preview: it stays dark grid
    assert report["first_frame_s"] < 10


def test_real_gestures_with_xdotool(xdisplay, tmp_path):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool not found: apt-get install -y xdotool")
    report = scenario("gestures", xdisplay, tmp_path)
    assert report["run_by_key"] == "completed"  # Ctrl+Enter
    assert report["moved"] != report["before_move"] and report["undo_move"] == report["before_move"]  # drag + Ctrl+Z
    assert report["redo_move"] == report["moved"]  # Ctrl+Y
    assert report["link_ok"] is True and report["links_after_ok"] == report["links_before"] + 1  # pin drag
    assert report["link_refused"].startswith("Link refused") and "cannot link image output" in report["link_refused"]
    assert report["links_after_refused"] == report["links_after_ok"]  # refused link not drawn
    assert report["deleted"] is True  # click + Delete key
    assert report["palette_added"] == "integer"  # palette click
    assert report["value_edit"] == 0.75  # typed into a float widget, committed on Enter


def test_bad_file_and_save_open_in_window(xdisplay, tmp_path):
    report = scenario("files", xdisplay, tmp_path)
    assert report["bad_open"] is False and "bad.json" in report["message"]
    assert report["nodes_after_bad"] == report["nodes_before"]
    assert report["reopened_positions"] == report["saved_positions"]
    assert report["save_dialog"]
    assert report["drawn_nodes"] == report["nodes_before"]


def test_menus_progress_cancel_viewer_prompt(xdisplay, tmp_path):
    report = scenario("more", xdisplay, tmp_path)
    assert report["add_menu_shown"] and report["menu_added"] == "float"
    assert report["menu_node_offset"] <= 40  # the node lands where the right-click was
    assert report["node_menu_shown"] and report["context_deleted"]
    assert "Open image" not in report["node_menu_entries"]  # a float node has no image to open
    assert {"Run to here  (Ctrl+Shift+Enter)", "Duplicate  (Ctrl+D)", "Bypass  (Ctrl+B)"} <= set(report["node_menu_entries"])
    assert report["progress_shown"] and 0 < report["progress_value"] < 1
    assert report["after_esc"] == "canceled" and report["message"] == "Canceled"
    # the saved PNG carries the graph that made it (the first run's, so with the slow node too)
    assert report["viewer_shown"] and {"blend", "color", "noise", "show", "size"} <= set(report["saved_image_nodes"])
    assert report["prompt_shown"] and report["graph_kept_while_prompting"] and report["demo_after_discard"]
    assert report["save_dialog_from_prompt"] and report["saved_from_prompt"]
    if report["has_txt2img"]:
        assert report["model_widget"] and not report["torch"]  # model combos list models without torch
    assert not report["torch"]


def test_session_opened_without_its_images_shows_stale_then_thumbnails(xdisplay, tmp_path, elsewhere):
    import numpy as np
    from PIL import Image

    from app.canvas.demo import demo_graph
    from app.canvas.thumbs import THUMB, fit_rgba
    from app.canvas.view import STATE_COLOURS
    from services.stores.sessions import write_session_file

    sender = elsewhere("sender")  # ran on another machine; the window's user folder has none of its images
    sent = sender.create_session(demo_graph())
    sender.invoke(sent)
    assert sender.wait(sent.id, 60) and sent.is_complete()
    write_session_file(sent, tmp_path / "received.json")
    report = scenario("stale", xdisplay, tmp_path)
    assert report["opened"] == {"size": "cached", "noise": "stale", "color": "stale", "blend": "stale", "show": "stale"}
    assert report["stale_text"] == "stale - will re-run" and not report["thumb_before"]
    opened = Image.open(tmp_path / "stale.png").convert("RGB")
    assert opened.getpixel(tuple(report["show_title"])) == STATE_COLOURS["stale"]  # the title bar in the stale colour
    assert report["ran"] == {"size": "cached", "noise": "completed", "color": "completed", "blend": "completed",
                             "show": "completed"}
    expected = fit_rgba(sender.images.get(sent.results["show"][0].outputs["image"]["image_name"]), THUMB)
    assert np.allclose(np.load(tmp_path / "thumb.npy"), expected, atol=1e-6)  # the sender's pixels, made here
    preview = region(tmp_path / "stale_ran.png", report["preview_rect"])
    assert len(preview.getcolors(maxcolors=1 << 16) or range(300)) > 200  # drawn on screen: noise, not blank
    ran = Image.open(tmp_path / "stale_ran.png").convert("RGB")
    assert ran.getpixel(tuple(report["show_title"])) == STATE_COLOURS["completed"]


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    """The tiny demo models (a .pth upscaler among them), written by the app's own command."""
    folder = tmp_path_factory.mktemp("models")
    done = subprocess.run([sys.executable, "-m", "app.main", "make-demo-models", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return folder


NO_TORCH = ("torch", "torchvision", "triton", "diffusers", "spandrel")


def test_generation_graph_runs_from_the_canvas_with_torch_only_in_the_worker(xdisplay, tmp_path, demo_models):
    """txt2img -> upscale -> show_image on the demo models, opened from a file and run in the window
    (on Mesa, torch in the canvas process would crash it: it must stay in the AI worker)."""
    graph = {"nodes": [{"id": "gen", "type": "txt2img", "model": "tiny-sd1", "prompt": "a red cube", "steps": 12,
                        "width": 64, "height": 64, "seed": 7},
                       {"id": "up", "type": "upscale", "model": "tiny-upscaler-x4"},
                       {"id": "show", "type": "show_image"}],
             "links": [{"from_node": "gen", "from_field": "image", "to_node": "up", "to_field": "image"},
                       {"from_node": "up", "from_field": "image", "to_node": "show", "to_field": "image"}]}
    from nodes.discovery import load_builtin_nodes
    from services.engine.graph import Graph
    from services.engine.session import Session
    from services.stores.sessions import write_session_file

    load_builtin_nodes()
    write_session_file(Session(Graph.from_dict(graph, strict=True)), tmp_path / "generate.json")
    report = scenario("generate", xdisplay, tmp_path, models=demo_models)
    assert report["states"] == {"gen": "completed", "up": "completed", "show": "completed"}
    assert 6 <= report["max_step"] <= 12 and report["preview_while_running"]  # progress drawn while it ran
    assert report["loaded_modules"] == [] and report["worker_pid"] not in (None, report["pid"])
    by_node = report["images_by_node"]
    assert sorted(report["images"]) == sorted({by_node["gen"], by_node["up"]})  # show_image shows upscale's PNG
    assert by_node["show"] == by_node["up"]
    from PIL import Image

    with Image.open(by_node["up"]) as image:
        assert image.size == (256, 256)
    preview = region(tmp_path / "generate.png", report["preview_rect"])
    assert len(preview.getcolors(maxcolors=1 << 16) or range(300)) > 200  # the result is drawn, not blank


def test_txt2img_from_the_palette_lists_models_without_torch(xdisplay, tmp_path, demo_models):
    report = scenario("palette_model", xdisplay, tmp_path, models=demo_models)
    assert report["palette_added"] == "txt2img"
    assert report["main_models"] == ["tiny-sd1", "tiny-sd1-single"] and report["upscalers"] == ["tiny-upscaler-x4"]
    assert "tiny-sd1" in report["combo_items"]
    assert report["state"] == "completed" and report["loaded_modules"] == []


def test_a_comfyui_workflow_imported_from_the_file_menu_runs_in_the_window(xdisplay, tmp_path, demo_models):
    """File -> Import of a ComfyUI API workflow (with a custom node it cannot map): the report is shown
    before anything runs, then the imported graph runs in the window with torch only in the AI worker."""
    workflow = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1-single.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 4, "cfg": 7, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
        "10": {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {"model_name": "mm_sd_v15.ckpt"}},
    }
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    report = scenario("import_run", xdisplay, tmp_path, models=demo_models)
    assert report["dialog_shown"] and "ADE_AnimateDiffLoaderGen1" in report["dialog_text"], report
    assert report["ran_before_ok"] is False and report["dialog_closed"]  # nothing runs before the report is read
    assert report["node_types"] == sorted(["main_model_loader", "prompt", "prompt", "empty_latent", "denoise_latents",
                                           "vae_decode", "save_image"])
    assert set(report["states"].values()) == {"completed"} and report["loaded_modules"] == []
    from PIL import Image

    (saved,) = [p for p in report["outputs"] if Path(p).name == "ComfyUI.png"]  # SaveImage's filename_prefix
    assert len(report["outputs"]) == 2  # and the decoded image in the image store
    with Image.open(saved) as image:
        assert image.size == (64, 64) and "a red cube" in image.text["parameters"]


def test_the_controlnet_example_runs_in_the_window_on_the_demo_models(xdisplay, tmp_path, demo_models):
    """File -> Examples -> ControlNet (canny), its model combos filled by the AI worker, run in the window."""
    import numpy as np
    from PIL import Image, ImageDraw

    source = Image.new("RGB", (96, 96), "black")
    ImageDraw.Draw(source).ellipse((16, 16, 80, 80), fill="white")
    source.save(tmp_path / "source.png")
    report = scenario("controlnet_example", xdisplay, tmp_path, models=demo_models)
    assert "controlnet-tiny-controlnet" in report["controlnet_combo"] and "tiny-sd1" in report["main_combo"]
    assert set(report["states"].values()) == {"completed"} and len(report["states"]) == 11, report
    assert report["loaded_modules"] == []  # torch, diffusers and the ControlNet only in the AI worker
    (saved,) = [p for p in report["outputs"] if Path(p).parent.name == "saved"]  # save_image's file
    assert len(report["outputs"]) == 4  # and the loaded, edge and decoded images in the image store
    with Image.open(saved) as image:
        assert image.size == (64, 64) and "a cozy cabin" in image.text["parameters"]
    edges = np.asarray(Image.open(report["edges"]).convert("L"))
    assert set(np.unique(edges)) == {0, 255} and 0 < (edges == 255).mean() < 0.1  # a thin white ring on black


def test_a_killed_canvas_offers_its_unsaved_edits_at_the_next_start(xdisplay, tmp_path):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool not found: apt-get install -y xdotool")
    env = {**os.environ, "DISPLAY": xdisplay, "INVOKE_NODES_ROOT": str(tmp_path / "user"), "PYTHONPATH": str(ROOT)}
    editing = subprocess.Popen([sys.executable, __file__, "recovery_edit", str(tmp_path)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "report.json").exists():  # written once the edits are autosaved; it renders on
            assert editing.poll() is None, editing.stdout.read()
            assert time.monotonic() < deadline, "the editing canvas did not report"
            time.sleep(0.2)
    finally:
        editing.kill()  # SIGKILL: no prompt, no save, no clean quit
        editing.wait(10)
    edited = json.loads((tmp_path / "report.json").read_text())
    (tmp_path / "report.json").unlink()
    assert edited["graph"] != edited["demo"]
    report = scenario("recovery_restore", xdisplay, tmp_path)
    assert report["offered"] and "did not close normally" in report["offer_text"]
    assert "untitled" in report["offer_text"] and "last change: link" in report["offer_text"]
    assert report["before_restore"] == edited["demo"]  # the start-up graph until Restore is clicked
    assert report["restored"] == edited["graph"] and report["dirty"]
    assert report["undone"] == edited["before_link"]  # Ctrl+Z: the undo history came back too
    assert report["prompt_on_quit"] and report["stopped"] and not report["recovery_left"]  # Discard + quit: nothing left


def test_editing_gestures(xdisplay, tmp_path):
    """Issue 14: clipboard, quick undo, zoom, fit, palette drag, link-drop search, link menu,
    reroute, group, bypass, F1, all with xdotool."""
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool not found: apt-get install -y xdotool")
    report = scenario("editing", xdisplay, tmp_path)
    demo = ["blend", "color", "noise", "show", "size"]
    assert report["selected_all"] == demo and report["clipboard_format"] == "invoke-nodes/nodes"
    assert report["after_paste"] == 10 and report["pasted_links"] == 10 and report["after_undo"] == 5
    assert max(abs(a - b) for a, b in zip(report["pasted_at"], report["mouse_model"])) < 2  # under the mouse
    assert report["duplicated"] == ["blend"]
    assert report["after_quick_undos"] == [960, 60]  # all three undone
    assert report["zoom_out"] == 0.65 and report["width_ratio"] < 0.85 and report["cursor_drift"] < 3
    assert report["collapsed"]
    assert report["fit_inside"] and report["fit_zoom"] < 1
    assert report["palette_drop"] == ["integer"] and report["drop_offset"] < 30
    assert report["drag_ghost"][0] == "+ integer"  # what is carried shows under the mouse
    assert abs(report["live_group_offset"][0] - 80) < 3 and abs(report["live_group_offset"][1] - 40) < 3  # nodes follow
    assert report["link_search_shown"] and "resize" in report["link_search_types"]
    assert "integer" not in report["link_search_types"] and "float" not in report["link_search_types"]
    assert report["linked_from_drop"]
    assert report["link_menu_shown"] and report["reroute_links"] == sorted([["blend", report["reroute"]], [report["reroute"], "show"]])
    assert report["groups"] == 1 and report["group_moved"][0] == report["group_moved"][1] != [0, 0]
    assert report["group_moved"][2] == [0, 0]  # blend is not in the group
    assert report["collapsed_hidden"] == [True, True, False] and report["expanded_shown"]
    assert report["bypassed"] and report["help_shown"]


def test_queue_gallery_run_to_here(xdisplay, tmp_path):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool not found: apt-get install -y xdotool")
    report = scenario("queue_gallery", xdisplay, tmp_path)
    assert report["still_typing"] and report["ran_with"] == 0.25  # Ctrl+Enter committed the typed value first
    assert report["size_with_thumb"] == report["size_before_thumb"]  # the thumbnail had its room: no node grows
    assert report["queued"][-3:] == ["run 1/3", "run 2/3", "run 3/3"]
    assert report["queue_states"] == ["completed"] * 4 and len(report["seeds"]) == 3
    assert report["gallery_images"] >= 4 and report["viewer_image"] == report["newest"]
    assert report["gallery_drop"] and report["gallery_drop"][0][0] == "load_image"
    assert report["gallery_drop"][0][1].endswith(report["first_image"])
    states = report["run_to_here"]
    assert states["noise"] == "completed" and states["blend"] == "idle" and states["show"] == "idle"
    minimap = region(tmp_path / "minimap.png", [report["minimap_rect"][:2], report["minimap_rect"][2:]])
    thumb = region(tmp_path / "minimap.png", report["thumb_rect"])
    assert len(thumb.getcolors(maxcolors=1 << 16) or range(300)) > 200  # the thumbnail is noise
    assert len(minimap.getcolors(maxcolors=1 << 16) or range(300)) < 100  # the minimap (greys) is not covered by it


def test_unsaved_edits_survive_a_canceled_open(xdisplay, tmp_path):
    report = scenario("unsaved", xdisplay, tmp_path)
    assert report["prompt"] and report["dialog"]
    assert report["dirty_after_cancel"] and "*" in report["status"] and report["alpha"] == 0.3
    assert report["quit_asks"] and report["stopped"]
    assert report["first_filter"] == ".*"


def test_showcase_generation_upscale_group_note(xdisplay, tmp_path, demo_models):
    """The README screenshot's graph: model combos preselected, thumbnails, the gallery (look at showcase.png)."""
    report = scenario("showcase", xdisplay, tmp_path, models=demo_models)
    assert set(report["states"].values()) == {"completed"} and report["groups"] == 1
    assert report["models"] == ["tiny-sd1", "tiny-upscaler-x4"]  # the first model of each kind, not blank
    assert len(report["thumbs"]) == 3 and report["gallery"] >= 2
    assert (tmp_path / "showcase.png").stat().st_size > 50_000


def test_without_display_prints_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["INVOKE_NODES_ROOT"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "app.main"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot open the canvas" in done.stderr and "DISPLAY" in done.stderr


def test_launch_opens_window_without_torch(xdisplay, tmp_path):
    env = {**os.environ, "DISPLAY": xdisplay, "INVOKE_NODES_ROOT": str(tmp_path / "user")}
    done = subprocess.run([sys.executable, "-m", "app.main", "--frames", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stderr


# --- the scenario side (this file run as a script in a fresh process) ---------------------------


class Driver:
    def __init__(self, out: Path, as_app: bool = False) -> None:
        """as_app: started the way `invoke-nodes` starts (crash recovery included)."""
        from app.canvas.controller import CanvasController
        from app.canvas.main import open_window, parse
        from app.canvas.view import CanvasView
        from services.container import WORKER, Services
        from services.invoker import Invoker

        started = time.perf_counter()
        self.out = out
        if as_app:
            self.invoker, self.c, self.view, self.recovery = open_window(parse(["--size", f"{SIZE[0]}x{SIZE[1]}"]))
        else:
            self.invoker = Invoker(Services.local(executor=WORKER))  # as the app runs it
            self.c = CanvasController(self.invoker)
            self.c.new_demo()
            self.view = CanvasView(self.c, width=SIZE[0], height=SIZE[1])
            self.view.start()
        import dearpygui.dearpygui as dpg

        self.dpg = dpg
        dpg.set_viewport_pos([0, 0])  # screen coordinates = window coordinates (no window manager)
        self.frames(3)
        self.first_frame_s = time.perf_counter() - started

    def frames(self, n: int = 1) -> None:
        for _ in range(n):
            self.view.frame()

    def until(self, done, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise TimeoutError(f"{self.c.message} {list(self.c.log)[-5:]}")
            self.frames(1)

    def xdo(self, *args: str, frames: int = 4) -> None:
        subprocess.run(["xdotool", *args], check=True)
        self.frames(frames)

    def center(self, item) -> tuple[int, int]:
        (x0, y0), (x1, y1) = self.dpg.get_item_rect_min(item), self.dpg.get_item_rect_max(item)
        return int((x0 + x1) / 2), int((y0 + y1) / 2)

    def pin(self, node_id: str, field: str, output: bool) -> tuple[int, int]:
        """Screen position of a pin: the node's left/right edge at the attribute's height."""
        items = self.view.nodes[node_id]
        attr = items.outputs[field] if output else items.inputs[field].attr
        shown = [i for i in self.dpg.get_item_children(attr, 1) if self.dpg.is_item_shown(i)]
        _, y = self.center(shown[0])  # an attribute has no rectangle of its own: its visible row has
        # a node's rectangle is its content; the pins sit on the frame, one padding (8 px) further out
        x = self.dpg.get_item_rect_max(items.node)[0] + 8 if output else self.dpg.get_item_rect_min(items.node)[0] - 8
        return int(x), y

    def drag(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        self.xdo("mousemove", str(start[0]), str(start[1]))
        self.xdo("mousedown", "1")
        for i in range(1, 6):
            x = start[0] + (end[0] - start[0]) * i // 5
            y = start[1] + (end[1] - start[1]) * i // 5
            self.xdo("mousemove", str(x), str(y), frames=2)
        self.xdo("mouseup", "1", frames=6)

    def add_from_palette(self, node_type: str) -> str | None:
        """Search the palette for a node type and click its entry; the new node's id."""
        before = set(self.c.graph.nodes)
        self.dpg.set_value(self.view.search, node_type)
        self.view._fill_palette()
        self.frames(3)
        entry = next(i for i in _walk(self.dpg, self.view.palette_list) if self.dpg.get_item_user_data(i) == node_type)
        x, y = self.center(entry)
        self.xdo("mousemove", str(x), str(y))
        self.xdo("click", "1", frames=6)
        added = set(self.c.graph.nodes) - before
        return added.pop() if len(added) == 1 else None

    def screenshot(self, name: str) -> None:
        self.view.screenshot(self.out / name)

    def close(self) -> None:
        self.view.destroy()
        self.c.close()
        self.invoker.shutdown()


def scenario_demo(d: Driver) -> dict:
    d.c.run()
    d.until(lambda: not d.c.is_running and d.view.nodes["show"].texture is not None)
    d.frames(3)
    texture = d.view.nodes["show"].texture
    pixels = d.dpg.get_value(texture)
    alpha = sum(pixels[3::4]) / (len(pixels) / 4)
    d.screenshot("demo.png")
    image = d.view.nodes["show"].image
    return {"states": {n: s.state for n, s in d.c.status.items()}, "texture_alpha": alpha,
            "preview_rect": [d.dpg.get_item_rect_min(image), d.dpg.get_item_rect_max(image)],
            "torch": "torch" in sys.modules, "first_frame_s": d.first_frame_s}


def scenario_gestures(d: Driver) -> dict:
    dpg, c, report = d.dpg, d.c, {}
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+Return")
    d.until(lambda: c.status["show"].state == "completed" and not c.is_running)
    report["run_by_key"] = c.status["show"].state
    # drag the show node by its title bar, then undo the move
    report["before_move"] = c.position("show")
    x0, y0 = dpg.get_item_rect_min(d.view.nodes["show"].node)
    d.drag((int(x0) + 40, int(y0) + 10), (int(x0) + 140, int(y0) + 90))
    report["moved"] = c.position("show")
    d.xdo("key", "ctrl+z")
    report["undo_move"] = c.position("show")
    d.xdo("key", "ctrl+y")
    report["redo_move"] = c.position("show")
    d.xdo("key", "ctrl+z")
    # link by dragging pins: integer.value -> solid_color.height (accepted) ...
    report["links_before"] = len(c.graph.links)
    d.drag(d.pin("size", "value", True), d.pin("color", "height", False))
    report["link_ok"] = any(l.to_node == "color" and l.to_field == "height" for l in c.graph.links)
    report["links_after_ok"] = len(c.graph.links)
    # ... noise.image -> blend.alpha (a float): refused with the reason in the status bar
    d.drag(d.pin("noise", "image", True), d.pin("blend", "alpha", False))
    report["link_refused"] = c.message
    report["links_after_refused"] = len(d.view.links)
    d.frames(2)
    d.screenshot("gestures.png")
    # type a value into the blend alpha field, commit with Enter
    widget = d.view.nodes["blend"].inputs["alpha"].widget
    x, y = d.center(widget)
    d.xdo("mousemove", str(x - 30), str(y))
    d.xdo("click", "--repeat", "2", "1")  # double-click selects the number's text
    d.xdo("key", "ctrl+a")
    d.xdo("type", "0.75")
    d.xdo("key", "Return", frames=6)
    report["value_edit"] = c.value("blend", "alpha")
    # select the show node by clicking its title, delete it with the Delete key
    x0, y0 = dpg.get_item_rect_min(d.view.nodes["show"].node)
    d.xdo("mousemove", str(int(x0) + 30), str(int(y0) + 10))
    d.xdo("click", "1", frames=6)
    d.xdo("key", "Delete", frames=6)
    report["deleted"] = "show" not in c.graph.nodes and "show" not in d.view.nodes
    node_id = d.add_from_palette("integer")
    report["palette_added"] = c.graph.nodes[node_id].type if node_id else None
    d.screenshot("gestures_end.png")
    return report


def scenario_files(d: Driver) -> dict:
    c, report = d.c, {}
    c.move({"show": (900, 300)})
    d.frames(2)
    report["nodes_before"] = sorted(c.graph.nodes)
    bad = d.out / "bad.json"
    bad.write_text("{broken")
    report["bad_open"] = c.open(bad)
    report["message"] = c.message
    d.frames(2)
    report["nodes_after_bad"] = sorted(c.graph.nodes)
    path = d.out / "saved.json"
    assert c.save(path)
    report["saved_positions"] = c.session.ui["positions"]
    c.path = None  # Ctrl+S on an unsaved graph asks where to save
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+s")
    report["save_dialog"] = d.dpg.is_item_shown(d.view.file_dialog)
    d.dpg.hide_item(d.view.file_dialog)
    c.new_demo()
    d.frames(2)
    assert c.open(path)
    d.frames(3)
    report["reopened_positions"] = c.session.ui["positions"]
    report["drawn_nodes"] = sorted(d.view.nodes)
    return report


def scenario_more(d: Driver) -> dict:
    dpg, c, view, report = d.dpg, d.c, d.view, {}
    # right-click on empty canvas -> add menu at the mouse -> search -> pick "float"
    x0, y0, _, _ = view.editor_area()
    point = (int(x0) + 120, int(y0) + 560)
    d.xdo("mousemove", str(point[0]), str(point[1]))
    d.xdo("click", "3", frames=6)
    report["add_menu_shown"] = dpg.is_item_shown(view.add_menu)
    d.xdo("type", "float", frames=6)
    entry = next(i for i in _walk(dpg, view.add_list) if dpg.get_item_user_data(i) == "float")
    x, y = d.center(entry)
    before = set(c.graph.nodes)
    d.xdo("mousemove", str(x), str(y))
    d.xdo("click", "1", frames=8)
    added = set(c.graph.nodes) - before
    node_id = added.pop() if len(added) == 1 else None
    report["menu_added"] = c.graph.nodes[node_id].type if node_id else None
    if node_id:
        rx, ry = dpg.get_item_rect_min(view.nodes[node_id].node)
        report["menu_node_offset"] = max(abs(rx - point[0]), abs(ry - point[1]))
    # right-click on a node -> its context menu -> Delete node
    nx, ny = dpg.get_item_rect_min(view.nodes[node_id].node)
    d.xdo("mousemove", str(int(nx) + 20), str(int(ny) + 5))
    d.xdo("click", "3", frames=6)
    report["node_menu_shown"] = dpg.is_item_shown(view.node_menu) and view.context_node == node_id
    entries = {dpg.get_item_configuration(i)["label"]: i for i in dpg.get_item_children(view.node_menu, 1)}
    report["node_menu_entries"] = sorted(entries)
    delete_item = entries["Delete  (Del)"]
    x, y = d.center(delete_item)
    d.xdo("mousemove", str(x), str(y))
    d.xdo("click", "1", frames=6)
    report["context_deleted"] = node_id not in c.graph.nodes
    # a slow node: progress bar while running, Esc cancels
    _register_slow_node()
    slow_id = c.add_node("test_window_slow", (20, 420))
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+Return")
    d.until(lambda: c.status[slow_id].step >= 5)
    d.frames(2)
    report["progress_shown"] = dpg.is_item_shown(view.nodes[slow_id].progress)
    report["progress_value"] = dpg.get_value(view.nodes[slow_id].progress)
    d.screenshot("progress.png")
    d.xdo("key", "Escape")
    d.until(lambda: not c.is_running)
    report["after_esc"], report["message"] = c.status[slow_id].state, c.message
    c.delete([slow_id])
    # run the demo, open the viewer by clicking the thumbnail, save the image (the graph travels in it)
    c.run()
    d.until(lambda: not c.is_running and view.nodes["show"].image is not None)
    d.frames(3)
    x, y = d.center(view.nodes["show"].image)
    d.xdo("mousemove", str(x), str(y))
    d.xdo("click", "1", frames=6)
    report["viewer_shown"] = dpg.is_item_shown(view.viewer)
    d.screenshot("viewer.png")
    view.ask_path("image", None)
    target = d.out / "saved_image.png"
    view._on_file_chosen(view.file_dialog, {"file_path_name": str(target)})  # what the dialog hands back
    dpg.hide_item(view.file_dialog)
    from services.stores.sessions import read_session_file

    report["saved_image_nodes"] = sorted(read_session_file(target).graph.nodes)
    # unsaved changes: New demo asks first; Discard goes on
    assert c.dirty
    view.request(c.new_demo)
    d.frames(3)
    report["prompt_shown"] = dpg.is_item_shown(view.prompt)
    report["graph_kept_while_prompting"] = "show" in c.graph.nodes and c.dirty
    view._prompt_discard()
    d.frames(3)
    report["demo_after_discard"] = set(c.graph.nodes) == {"size", "noise", "color", "blend", "show"} and not c.dirty
    # Save from the prompt on a never-saved graph: the save dialog comes, then the action goes on
    c.set_value("blend", "alpha", 0.3)
    view.request(c.new_demo)
    view._prompt_save()
    d.frames(2)
    report["save_dialog_from_prompt"] = dpg.is_item_shown(view.file_dialog)
    view._on_file_chosen(view.file_dialog, {"file_path_name": str(d.out / "from_prompt")})
    dpg.hide_item(view.file_dialog)
    d.frames(2)
    report["saved_from_prompt"] = (d.out / "from_prompt.json").is_file() and c.value("blend", "alpha") == 0.55
    # a generation node shows its model combo (built from the schema) without importing torch
    report["has_txt2img"] = "txt2img" in REGISTRY
    if report["has_txt2img"]:
        gen = c.add_node("txt2img", (300, 420))
        d.frames(3)
        report["model_widget"] = view.nodes[gen].inputs["model"].widget is not None
    report["torch"] = "torch" in sys.modules
    return report


def scenario_stale(d: Driver) -> dict:
    import numpy as np

    c, dpg, view = d.c, d.dpg, d.view
    assert c.open(d.out / "received.json")
    d.frames(4)
    x0, y0 = dpg.get_item_rect_min(view.nodes["show"].node)
    x1, _ = dpg.get_item_rect_max(view.nodes["show"].node)
    report = {"opened": {n: s.state for n, s in c.status.items()}, "stale_text": dpg.get_value(view.nodes["show"].state_text),
              "thumb_before": view.nodes["show"].texture is not None, "show_title": [int(x1) - 6, int(y0) + 4]}
    d.screenshot("stale.png")
    c.run()
    d.until(lambda: not c.is_running and view.nodes["show"].texture is not None)
    d.frames(3)
    report["ran"] = {n: s.state for n, s in c.status.items()}
    np.save(d.out / "thumb.npy", np.asarray(dpg.get_value(view.nodes["show"].texture), dtype=np.float32))
    image = view.nodes["show"].image
    report["preview_rect"] = [dpg.get_item_rect_min(image), dpg.get_item_rect_max(image)]
    d.screenshot("stale_ran.png")
    return report


def scenario_generate(d: Driver) -> dict:
    c, view = d.c, d.view
    assert c.open(d.out / "generate.json"), c.message
    d.frames(3)
    c.run()
    max_step, preview_while_running = 0, False
    end = time.monotonic() + 180
    while c.is_running or view.nodes["show"].texture is None:
        if time.monotonic() > end:
            raise TimeoutError(f"{c.message} {list(c.log)[-5:]}")
        d.frames(1)
        status = c.status["gen"]
        if status.state == "running":  # the last step and the completion may land in one frame
            max_step = max(max_step, status.step)
            preview_while_running |= view.nodes["gen"].texture is not None
    d.frames(3)
    d.screenshot("generate.png")
    images = {node_id: str(c.invoker.images.path(c.status[node_id].image_name)) for node_id in ("gen", "up", "show")}
    outputs = sorted(str(p) for p in c.invoker.settings.outputs_dir.rglob("*.png"))
    return {"states": {n: s.state for n, s in c.status.items()}, "max_step": max_step,
            "preview_while_running": preview_while_running, "images_by_node": images, "images": outputs,
            "preview_rect": [d.dpg.get_item_rect_min(view.nodes["show"].image),
                             d.dpg.get_item_rect_max(view.nodes["show"].image)],
            "loaded_modules": [m for m in NO_TORCH if m in sys.modules], "pid": os.getpid(),
            "worker_pid": c.invoker.services.executor.worker_pid}


def scenario_palette_model(d: Driver) -> dict:
    dpg, c, report = d.dpg, d.c, {}
    c.delete(list(c.graph.nodes))
    d.frames(2)
    node_id = d.add_from_palette("txt2img")
    report["palette_added"] = c.graph.nodes[node_id].type if node_id else None
    d.until(lambda: c.model_choices("main") != [], timeout=120)  # listed by the AI worker, in the background
    d.frames(3)
    report["main_models"], report["upscalers"] = c.model_choices("main"), c.model_choices("upscaler")
    report["combo_items"] = dpg.get_item_configuration(d.view.nodes[node_id].inputs["model"].widget)["items"]
    for field, value in (("model", "tiny-sd1"), ("steps", 2), ("width", 64), ("height", 64)):
        c.set_value(node_id, field, value)
    d.frames(2)
    c.run()
    d.until(lambda: not c.is_running, timeout=180)
    d.screenshot("palette_model.png")
    report["state"] = c.status[node_id].state
    report["loaded_modules"] = [m for m in NO_TORCH if m in sys.modules]
    return report




def scenario_controlnet_example(d: Driver) -> dict:
    dpg, c, view = d.dpg, d.c, d.view
    c.open_example("controlnet")
    d.until(lambda: c.model_choices("controlnet") != [], timeout=120)  # listed by the AI worker
    d.frames(3)
    report = {"controlnet_combo": dpg.get_item_configuration(view.nodes["controlnet"].inputs["model"].widget)["items"],
              "main_combo": dpg.get_item_configuration(view.nodes["model"].inputs["model"].widget)["items"]}
    for node_id, field, value in (("source", "path", str(d.out / "source.png")), ("model", "model", "tiny-sd1"),
                                  ("controlnet", "model", "controlnet-tiny-controlnet"), ("empty", "width", 64),
                                  ("empty", "height", 64), ("denoise", "steps", 4)):
        c.set_value(node_id, field, value)
    d.frames(2)
    c.run()
    d.until(lambda: not c.is_running, timeout=180)
    d.frames(3)
    d.screenshot("controlnet_example.png")
    report["states"] = {n: s.state for n, s in c.status.items()}
    report["outputs"] = sorted(str(p) for p in c.invoker.settings.outputs_dir.rglob("*.png"))
    report["edges"] = str(c.invoker.images.path(c.status["edges"].image_name))
    report["loaded_modules"] = [m for m in NO_TORCH if m in sys.modules]
    return report


def scenario_import_run(d: Driver) -> dict:
    dpg, c, view = d.dpg, d.c, d.view
    view.ask_path("import", None)  # File -> Import...: the dialog, then the file the user picks in it
    d.frames(2)
    dpg.hide_item(view.file_dialog)  # as Dear PyGui does when a file is chosen, before its callback
    d.frames(3)
    view._on_file_chosen(view.file_dialog, {"file_path_name": str(d.out / "workflow.json")})
    d.frames(3)
    report = {"dialog_shown": dpg.is_item_shown(view.import_window), "dialog_text": dpg.get_value(view.import_text),
              "message": c.message,
              "ran_before_ok": c.is_running or any(s.state in ("running", "completed") for s in c.status.values())}
    d.screenshot("import_report.png")
    x, y = d.center(dpg.get_item_children(view.import_window, 1)[-1])  # the OK button
    d.xdo("mousemove", str(x), str(y))
    d.xdo("click", "1", frames=3)
    report["dialog_closed"] = not dpg.is_item_shown(view.import_window)
    report["node_types"] = sorted(c.graph.nodes[n].type for n in c.graph.nodes)
    c.run()
    d.until(lambda: not c.is_running, timeout=180)
    d.frames(3)
    d.screenshot("import_run.png")
    report["states"] = {n: s.state for n, s in c.status.items()}
    report["outputs"] = sorted(str(p) for p in c.invoker.settings.outputs_dir.rglob("*.png"))
    report["loaded_modules"] = [m for m in NO_TORCH if m in sys.modules]
    return report


def graph_state(c) -> dict:
    """What the user sees of a graph: values, links, positions."""
    return {"nodes": {n: c.graph.nodes[n].to_dict() for n in c.graph.order}, "links": sorted(sorted(l.to_dict().items()) for l in c.graph.links),
            "positions": {n: c.position(n) for n in c.graph.order}}


def scenario_recovery_edit(d: Driver) -> dict:
    """Edit with real gestures, wait for the autosave, report, then keep rendering until killed."""
    dpg, c = d.dpg, d.c
    demo = graph_state(c)
    x0, y0 = dpg.get_item_rect_min(d.view.nodes["show"].node)
    d.drag((int(x0) + 40, int(y0) + 10), (int(x0) + 140, int(y0) + 90))  # move
    widget = d.view.nodes["blend"].inputs["alpha"].widget
    x, y = d.center(widget)
    d.xdo("mousemove", str(x - 30), str(y))
    d.xdo("click", "--repeat", "2", "1")
    d.xdo("key", "ctrl+a")
    d.xdo("type", "0.625")
    d.xdo("key", "Return", frames=6)  # a value
    before_link = graph_state(c)
    d.drag(d.pin("size", "value", True), d.pin("color", "height", False))  # a link
    assert c.value("blend", "alpha") == 0.625 and len(c.graph.links) == len(demo["links"]) + 1, (c.value("blend", "alpha"), c.graph.links)
    d.until(lambda: d.recovery.path.exists() and d.recovery._first_edit is None, timeout=30)
    (d.out / "report.json").write_text(json.dumps({"demo": demo, "before_link": before_link, "graph": graph_state(c)},
                                                  default=list))
    while True:
        d.frames(1)


# --- issue 14: the gestures ComfyUI and InvokeAI users reach for ---------------------------------


def _entry(d: Driver, parent, user_data):
    return next(i for i in _walk(d.dpg, parent) if d.dpg.get_item_user_data(i) == user_data)


def _model_at(d: Driver, point) -> list[float]:
    return d.view.vp.to_model(d.view.to_editor(point))


def scenario_editing(d: Driver) -> dict:
    dpg, c, view, report = d.dpg, d.c, d.view, {}
    x0, y0, x1, y1 = view.editor_area()
    empty = (int(x0) + 80, int(y1) - 60)  # bottom left of the canvas: no node there
    d.xdo("mousemove", *map(str, empty))
    # Ctrl+A, Ctrl+C, Ctrl+V (under the mouse), Ctrl+Z
    d.xdo("key", "ctrl+a")
    report["selected_all"] = sorted(c.selection)
    d.xdo("key", "ctrl+c")
    report["clipboard_format"] = json.loads(view.read_clipboard()).get("format")
    d.xdo("key", "ctrl+v", frames=6)
    report["after_paste"] = len(c.graph.nodes)
    report["pasted_links"] = len(c.graph.links)
    pasted = sorted(c.selection)
    report["pasted_at"] = [min(c.position(n)[0] for n in pasted), min(c.position(n)[1] for n in pasted)]
    report["mouse_model"] = _model_at(d, empty)
    d.xdo("key", "ctrl+z", frames=4)
    report["after_undo"] = len(c.graph.nodes)
    # click one node, Ctrl+D
    bx, by = dpg.get_item_rect_min(view.nodes["blend"].node)
    d.xdo("mousemove", str(int(bx) + 30), str(int(by) - 5))
    d.xdo("click", "1", frames=4)
    d.xdo("key", "ctrl+d", frames=6)
    dup = [n for n in c.graph.nodes if n not in ("size", "noise", "color", "blend", "show")]
    report["duplicated"] = [c.graph.nodes[n].type for n in dup]
    d.xdo("key", "ctrl+z", frames=4)
    # quick Ctrl+Z presses are all taken (Ctrl tracked in order with the keys)
    for x in (100, 200, 300):
        c.move({"show": (900 + x, 60)})
    d.frames(2)
    d.xdo("key", "--delay", "5", "ctrl+z", "ctrl+z", "ctrl+z", frames=8)
    report["after_quick_undos"] = c.position("show")
    # Ctrl+wheel zooms about the mouse; nodes shrink with their font
    cursor = d.center(view.nodes["noise"].node)
    width_before = dpg.get_item_rect_size(view.nodes["noise"].node)[0]
    model_before = _model_at(d, cursor)
    d.xdo("mousemove", *map(str, cursor))
    d.xdo("keydown", "ctrl", frames=2)
    for _ in range(2):
        d.xdo("click", "5", frames=3)  # wheel down: zoom out
    d.xdo("keyup", "ctrl", frames=4)
    report["zoom_out"] = view.vp.zoom
    report["width_ratio"] = dpg.get_item_rect_size(view.nodes["noise"].node)[0] / width_before
    report["cursor_drift"] = max(abs(a - b) for a, b in zip(_model_at(d, cursor), model_before))
    d.screenshot("zoomed_out.png")
    d.xdo("keydown", "ctrl", frames=2)
    for _ in range(4):
        d.xdo("click", "5", frames=3)
    d.xdo("keyup", "ctrl", frames=4)
    report["collapsed"] = view.vp.collapsed and not dpg.is_item_shown(view.nodes["blend"].inputs["alpha"].widget)
    d.screenshot("collapsed.png")
    # F: fit the graph in view
    c.move({"show": (2600, 1400)})
    d.frames(3)
    d.xdo("mousemove", *map(str, empty))
    d.xdo("key", "f", frames=6)
    rects = [(dpg.get_item_rect_min(i.node), dpg.get_item_rect_max(i.node)) for i in view.nodes.values()]
    report["fit_inside"] = all(x0 - 10 <= a[0] and b[0] <= x1 + 10 and y0 - 10 <= a[1] and b[1] <= y1 + 10 for a, b in rects)
    report["fit_zoom"] = view.vp.zoom
    d.screenshot("fit.png")
    c.move({"show": (960, 60)})
    view.vp.set_zoom(1.0, (0, 0))
    view.vp.offset = (0.0, 0.0)
    view._apply_zoom()
    d.frames(4)
    # palette drag: the node lands under the mouse
    dpg.set_value(view.search, "integer")
    view._fill_palette()
    d.frames(3)
    before = set(c.graph.nodes)
    target = (int(x0) + 150, int(y1) - 120)
    start = d.center(_entry(d, view.palette_list, "integer"))
    d.xdo("mousemove", *map(str, start))
    d.xdo("mousedown", "1")
    for i in range(1, 6):
        d.xdo("mousemove", str(start[0] + (target[0] - start[0]) * i // 5), str(start[1] + (target[1] - start[1]) * i // 5), frames=2)
    report["drag_ghost"] = view._ghost()
    d.screenshot("palette_drag.png")
    d.xdo("mouseup", "1", frames=6)
    added = set(c.graph.nodes) - before
    report["palette_drop"] = [c.graph.nodes[n].type for n in added]
    if added:
        node = added.pop()
        report["drop_offset"] = max(abs(a - b) for a, b in zip(c.position(node), _model_at(d, target)))
        c.delete([node])
        d.frames(3)
    # a link dropped on empty canvas opens the search with compatible nodes; the pick comes linked
    start = d.pin("noise", "image", True)
    drop = (int(x1) - 420, int(y1) - 80)
    d.drag(start, drop)
    d.frames(4)
    report["link_search_shown"] = dpg.is_item_shown(view.add_menu)
    listed = {dpg.get_item_user_data(i) for i in _walk(dpg, view.add_list) if dpg.get_item_user_data(i)}
    report["link_search_types"] = sorted(listed)
    d.screenshot("link_search.png")
    before = set(c.graph.nodes)
    x, y = d.center(_entry(d, view.add_list, "resize"))
    d.xdo("mousemove", str(x), str(y))
    d.xdo("click", "1", frames=6)
    added = set(c.graph.nodes) - before
    resize = added.pop() if added else None
    report["linked_from_drop"] = resize is not None and any(
        l.from_node == "noise" and l.from_field == "image" and l.to_node == resize for l in c.graph.links)
    if resize:
        c.delete([resize])
        d.frames(3)
    # right-click on a link: its menu; insert a reroute
    a, b = d.pin("blend", "image", True), d.pin("show", "image", False)
    middle = ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2)
    d.xdo("mousemove", *map(str, middle), frames=4)
    d.xdo("click", "3", frames=6)
    report["link_menu_shown"] = dpg.is_item_shown(view.link_menu)
    if report["link_menu_shown"]:
        item = next(i for i in dpg.get_item_children(view.link_menu, 1) if dpg.get_item_configuration(i)["label"] == "Insert reroute")
        d.xdo("mousemove", *map(str, d.center(item)))
        d.xdo("click", "1", frames=6)
    reroutes = [n for n in c.graph.nodes if c.graph.nodes[n].type == "reroute"]
    report["reroute_links"] = sorted((l.from_node, l.to_node) for l in c.graph.links if reroutes and reroutes[0] in (l.from_node, l.to_node))
    report["reroute"] = reroutes[0] if reroutes else None
    # group: select two nodes, Ctrl+G, drag the group by its title
    d.xdo("mousemove", *map(str, empty))
    c.move({"noise": (235, 110), "color": (455, 330)})  # room above them for the group's title
    d.frames(3)
    view.select({"noise", "color"})
    d.frames(2)
    d.xdo("key", "ctrl+g", frames=6)
    report["groups"] = len(c.groups)
    before = {n: c.position(n) for n in ("noise", "color", "blend")}
    gx, gy, gw, gh = c.groups[0]["rect"]
    title = tuple(int(v) for v in view.to_screen((gx + 40, gy + 12)))
    noise_at = dpg.get_item_rect_min(view.nodes["noise"].node)
    d.xdo("mousemove", *map(str, title))
    d.xdo("mousedown", "1")
    for i in range(1, 6):
        d.xdo("mousemove", str(title[0] + 16 * i), str(title[1] + 8 * i), frames=2)
    d.frames(2)
    live = dpg.get_item_rect_min(view.nodes["noise"].node)
    report["live_group_offset"] = [live[0] - noise_at[0], live[1] - noise_at[1]]
    d.xdo("mouseup", "1", frames=6)
    report["group_moved"] = [[c.position(n)[i] - before[n][i] for i in (0, 1)] for n in ("noise", "color", "blend")]
    c.add_node("note", (20, 420), {"text": "Ctrl+G groups the selection"})
    d.frames(4)
    d.screenshot("group.png")
    # right-click the group's title: its menu; collapse hides its nodes and their links, expand shows them
    gx, gy, gw, gh = c.groups[0]["rect"]
    title = tuple(int(v) for v in view.to_screen((gx + 40, gy + 12)))

    def group_menu_pick(label: str) -> None:
        d.xdo("mousemove", *map(str, title))
        d.xdo("click", "3", frames=6)
        item = next(i for i in dpg.get_item_children(view.group_menu, 1)
                    if dpg.get_item_type(i).endswith("Selectable") and dpg.get_item_configuration(i)["label"] == label)
        d.xdo("mousemove", *map(str, d.center(item)))
        d.xdo("click", "1", frames=6)

    group_menu_pick("Collapse")
    report["collapsed_hidden"] = [not dpg.is_item_shown(view.nodes[n].node) for n in ("noise", "color", "blend")]
    d.screenshot("group_collapsed.png")
    group_menu_pick("Expand")
    report["expanded_shown"] = all(dpg.is_item_shown(view.nodes[n].node) for n in ("noise", "color"))
    # Ctrl+B bypasses the selection; F1 lists the shortcuts
    view.select({"blend"})
    d.xdo("key", "ctrl+b", frames=6)
    report["bypassed"] = c.bypassed("blend")
    d.xdo("key", "F1", frames=4)
    report["help_shown"] = dpg.is_item_shown(view.help_window)
    d.screenshot("help.png")
    return report


def scenario_queue_gallery(d: Driver) -> dict:
    dpg, c, view, report = d.dpg, d.c, d.view, {}
    report["size_before_thumb"] = list(dpg.get_item_rect_size(view.nodes["show"].node))
    # a value still being typed is what Ctrl+Enter runs with
    widget = view.nodes["blend"].inputs["alpha"].widget
    x, y = d.center(widget)
    d.xdo("mousemove", str(x - 30), str(y))
    d.xdo("click", "--repeat", "2", "1")
    d.xdo("key", "ctrl+a")
    d.xdo("type", "0.25")
    report["still_typing"] = dpg.is_item_active(widget)
    d.xdo("key", "ctrl+Return", frames=4)
    d.until(lambda: not c.is_running)
    report["ran_with"] = c.invoker.get_session(c.queue[0].session_id).graph.nodes["blend"].values.get("alpha")
    d.frames(3)
    report["size_with_thumb"] = list(dpg.get_item_rect_size(view.nodes["show"].node))
    # Run x3 from the toolbar: three queue entries, three new seeds, the queue panel and the gallery
    dpg.set_value(view.run_count, 3)
    d.xdo("mousemove", *map(str, d.center(view.queue_button)))
    d.xdo("click", "1", frames=4)
    d.xdo("mousemove", *map(str, d.center(view.run_button)))
    d.xdo("click", "1", frames=4)
    report["queued"] = [e.label for e in c.queue]
    d.until(lambda: not c.is_running, timeout=120)
    d.frames(4)
    report["queue_states"] = [e.state for e in c.queue]
    report["seeds"] = sorted({c.invoker.get_session(e.session_id).graph.nodes["noise"].values["seed"] for e in c.queue[1:]})
    d.screenshot("queue.png")
    d.xdo("mousemove", *map(str, d.center(view.queue_button)))
    d.xdo("click", "1", frames=4)
    d.xdo("mousemove", *map(str, d.center(view.gallery_button)))
    d.xdo("click", "1", frames=6)
    report["gallery_images"] = len(view.gallery_buttons)
    d.screenshot("gallery.png")
    newest = c.gallery[0].image_name
    d.xdo("mousemove", *map(str, d.center(view.gallery_buttons[newest])))
    d.xdo("click", "1", frames=6)  # a click opens it large
    report["viewer_image"] = view.viewer_image if dpg.is_item_shown(view.viewer) else None
    report["newest"] = newest
    dpg.hide_item(view.viewer)
    d.frames(2)
    # drag an image from the gallery onto the canvas: a load_image node reading it
    first = c.gallery[0].image_name
    x0, y0, x1, y1 = view.editor_area()
    before = set(c.graph.nodes)
    d.drag(d.center(view.gallery_buttons[first]), (int(x0) + 120, int(y1) - 100))
    added = set(c.graph.nodes) - before
    report["gallery_drop"] = [(c.graph.nodes[n].type, c.value(n, "path")) for n in added]
    report["first_image"] = first
    d.xdo("mousemove", *map(str, d.center(view.gallery_button)))
    d.xdo("click", "1", frames=4)
    # run to here: only noise and what it needs
    c.set_value("noise", "scale", 16)
    view.select({"noise"})
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+shift+Return", frames=4)
    d.until(lambda: not c.is_running)
    report["run_to_here"] = {n: c.status[n].state for n in ("size", "noise", "color", "blend", "show")}
    # the minimap is drawn above the nodes: a thumbnail under it does not show through
    c.run()
    d.until(lambda: not c.is_running and view.nodes["show"].image is not None)
    fx0, fy0, fx1, fy1 = view._minimap_frame()
    show = view.nodes["show"]
    ix0, iy0 = dpg.get_item_rect_min(show.image)
    nx, ny = c.position("show")
    c.move({"show": (nx + (fx0 + 20 - ix0), ny + (fy0 + 20 - iy0))})  # the thumbnail's corner under the minimap
    d.frames(6)
    d.screenshot("minimap.png")
    report["minimap_rect"] = [fx0 + 30, fy0 + 30, fx1 - 10, fy1 - 10]
    report["thumb_rect"] = [list(dpg.get_item_rect_min(show.image)), list(dpg.get_item_rect_max(show.image))]
    return report


def scenario_recovery_restore(d: Driver) -> dict:
    dpg, view, report = d.dpg, d.view, {}
    d.frames(3)
    report["offered"] = view.found is not None and dpg.is_item_shown(view.restore_prompt)
    report["offer_text"] = dpg.get_value(view.restore_text)
    report["before_restore"] = graph_state(d.c)
    d.screenshot("recovery_offer.png")
    d.xdo("mousemove", *map(str, d.center(_button(dpg, view.restore_prompt, "Restore"))))
    d.xdo("click", "1", frames=6)
    report["restored"], report["dirty"] = graph_state(d.c), d.c.dirty
    d.screenshot("recovery_restored.png")
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+z")
    report["undone"] = graph_state(d.c)
    view.request(view.stop)  # what closing the window does
    d.frames(3)
    report["prompt_on_quit"] = dpg.is_item_shown(view.prompt)
    d.xdo("mousemove", *map(str, d.center(_button(dpg, view.prompt, "Discard"))))
    d.xdo("click", "1", frames=4)
    report["stopped"] = not view.running
    report["recovery_left"] = d.recovery.path.exists()
    return report


def _button(dpg, window, label: str):
    return next(i for i in _walk(dpg, window) if dpg.get_item_label(i) == label)


def scenario_unsaved(d: Driver) -> dict:
    dpg, c, view, report = d.dpg, d.c, d.view, {}
    c.set_value("blend", "alpha", 0.3)
    d.frames(2)
    d.xdo("mousemove", "700", "300")
    d.xdo("key", "ctrl+o", frames=4)
    report["prompt"] = dpg.is_item_shown(view.prompt)
    view._prompt_discard()  # the Discard button
    d.frames(4)
    report["dialog"] = dpg.is_item_shown(view.file_dialog)
    view._prompt_cancel()  # the dialog's Cancel (its cancel_callback)
    dpg.hide_item(view.file_dialog)
    d.frames(3)
    report["dirty_after_cancel"] = c.dirty
    report["status"] = dpg.get_value(view.status_text)
    report["alpha"] = c.value("blend", "alpha")
    view.request(view.stop)  # File > Quit
    d.frames(3)
    report["quit_asks"] = dpg.is_item_shown(view.prompt) and view.running
    view._prompt_discard()
    report["stopped"] = not view.running
    # a typed name keeps its extension whatever filter the dialog showed last
    view.ask_path("save", None)
    exts = [dpg.get_item_configuration(i).get("extension") for i in dpg.get_item_children(view.file_dialog, 0)]
    report["first_filter"] = str(exts[0]) if exts else None
    dpg.hide_item(view.file_dialog)
    return report


def scenario_showcase(d: Driver) -> dict:
    """The README's screenshot: generation + upscale on the demo models, with thumbnails, a group and a note."""
    c, view = d.c, d.view
    c.delete(list(c.graph.nodes))
    d.until(lambda: c.model_choices("main") != [], timeout=120)
    gen = c.add_node("txt2img", (20, 80), {"prompt": "a lighthouse on a cliff at dusk, oil painting", "steps": 8,
                                           "width": 64, "height": 64, "seed": 42})
    up = c.add_node("upscale", (400, 80))
    show = c.add_node("show_image", (720, 80))
    c.connect(gen, "image", up, "image")
    c.connect(up, "image", show, "image")
    c.add_node("note", (400, 430), {"text": "Random-weight demo models:\nthe images are noise.\nF1 lists the shortcuts."})
    d.frames(4)
    c.add_group([gen, up], "generate + upscale")
    c.set_randomize(gen, "seed", False)
    c.run()
    d.until(lambda: not c.is_running and view.nodes[show].image is not None, timeout=180)
    view.toggle(view.gallery_window)
    d.frames(6)
    dpg = d.dpg
    dpg.set_item_pos(view.gallery_window, [960, 420])
    dpg.configure_item(view.gallery_window, width=420, height=270)
    d.xdo("mousemove", "100", "600")  # no tooltip in the picture
    d.frames(6)
    d.screenshot("showcase.png")
    return {"states": {n: s.state for n, s in c.status.items()}, "groups": len(c.groups),
            "thumbs": [n for n, items in view.nodes.items() if items.image is not None],
            "gallery": len(view.gallery_buttons), "models": [c.value(gen, "model"), c.value(up, "model")]}


def _register_slow_node() -> None:
    """Only in the scenario process: pytest's own REGISTRY stays as the app has it."""

    class SlowWindowInvocation(BaseInvocation):
        """Counts slowly (a stand-in for a denoise loop)."""

        type: Literal["test_window_slow"] = "test_window_slow"
        category: ClassVar[str] = "test"
        cacheable: ClassVar[bool] = False
        steps: int = InputField(400)

        def invoke(self, context) -> IntOutput:
            for step in range(self.steps):
                context.progress(step + 1, self.steps)
                time.sleep(0.02)
            return IntOutput(value=self.steps)


def _walk(dpg, item):
    for child in dpg.get_item_children(item, 1) or []:
        yield child
        yield from _walk(dpg, child)


if __name__ == "__main__":
    name, out = sys.argv[1], Path(sys.argv[2])
    driver = Driver(out, as_app=name.startswith("recovery"))
    try:
        result = globals()[f"scenario_{name}"](driver)
    finally:
        driver.close()
    (out / "report.json").write_text(json.dumps(result, default=list))
