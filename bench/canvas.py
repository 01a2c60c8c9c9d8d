"""Canvas benchmark under Xvfb: frame time of the app vs a bare Dear PyGui node editor holding the
same nodes, links and widgets (same run, same display), the cost of one progress update, and
launch-to-first-frame.

    .venv/bin/python bench/canvas.py [--sizes 50,300,1000] [--frames 120]

Software OpenGL (Mesa llvmpipe) makes absolute frame rates meaningless; the ratio app/bare shows
what the app adds.  Every measurement runs in its own process (one Dear PyGui context each).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.canvas.system import start_virtual_display  # noqa: E402 - after the path fix above

SIZE = (1400, 860)
# one repeating unit: a primitive feeding an image chain (int, enum, seed and link-only pins)
UNIT = [("integer", {"value": 64}), ("noise_image", {"height": 64, "seed": 1}), ("resize", {"width": 32, "height": 32}),
        ("show_image", {})]
UNIT_LINKS = [(0, "value", 1, "width"), (1, "image", 2, "image"), (2, "image", 3, "image")]


def bench_graph(count: int) -> tuple[dict, dict]:
    """`count` nodes in repeated units, laid out in a grid; returns (graph, positions)."""
    nodes, links, positions = [], [], {}
    for index in range(count):
        unit, slot = divmod(index, len(UNIT))
        node_type, values = UNIT[slot]
        node_id = f"n{index}"
        nodes.append({"id": node_id, "type": node_type, **values})
        positions[node_id] = [20 + 260 * (index % 5), 20 + 230 * (index // 5)]
    for index in range(0, count, len(UNIT)):
        for a, out, b, inp in UNIT_LINKS:
            if index + b < count:
                links.append({"from_node": f"n{index + a}", "from_field": out, "to_node": f"n{index + b}", "to_field": inp})
    return {"nodes": nodes, "links": links}, positions


def time_frames(render, frames: int) -> list[float]:
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        render()
        times.append(time.perf_counter() - start)
    return times


# --- the measuring child: app and bare editor in one process, measured in alternation ---------


def build_bare(count: int, editor_size: list[int]) -> int:
    """A plain node editor with the same nodes, widgets (by the same schema) and links, as large
    as the app's editor (a larger editor draws more and would flatter the app).  Returns its window."""
    import dearpygui.dearpygui as dpg

    from app.canvas.schema import pin_spec
    from nodes.base import REGISTRY

    graph, positions = bench_graph(count)
    attrs = {}
    with dpg.window(show=False) as window:
        with dpg.node_editor(minimap=True, width=editor_size[0], height=editor_size[1]) as editor:
            for node in graph["nodes"]:
                cls = REGISTRY[node["type"]]
                with dpg.node(label=cls.title(), pos=positions[node["id"]]):
                    for port in cls.inputs().values():
                        spec = pin_spec(port).widget
                        with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Input) as attr:
                            if spec.kind == "int":
                                dpg.add_input_int(label=port.title, width=140)
                            elif spec.kind == "combo":
                                dpg.add_combo([str(c) for c in spec.choices], label=port.title, width=140)
                            elif spec.kind == "seed":
                                dpg.add_input_text(label=port.title, width=140)
                                dpg.add_checkbox(label="randomize each run")
                            else:
                                dpg.add_text(port.title)
                        attrs[(node["id"], port.name, False)] = attr
                    for port in cls.outputs().values():
                        with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Output) as attr:
                            dpg.add_text(port.title)
                        attrs[(node["id"], port.name, True)] = attr
                    with dpg.node_attribute(attribute_type=dpg.mvNode_Attr_Static):
                        dpg.add_text("idle")
            for link in graph["links"]:
                dpg.add_node_link(attrs[(link["from_node"], link["from_field"], True)],
                                  attrs[(link["to_node"], link["to_field"], False)], parent=editor)
    return window


def child(count: int, frames: int) -> dict:
    import dearpygui.dearpygui as dpg
    from PIL import Image

    from app.canvas.controller import CanvasController
    from app.canvas.view import CanvasView
    from services.container import Services
    from services.engine.events import NODE_PROGRESS, Event
    from services.engine.graph import Graph
    from services.invoker import Invoker
    from services.engine.session import Session
    from services.stores.sessions import write_session_file

    graph, positions = bench_graph(count)
    invoker = Invoker(Services.local())
    controller = CanvasController(invoker)
    path = Path(os.environ["INVOKE_NODES_ROOT"]) / "bench.json"
    write_session_file(Session(Graph.from_dict(graph), ui={"positions": positions}), path)
    assert controller.open(path), controller.message
    view = CanvasView(controller, width=SIZE[0], height=SIZE[1], vsync=False)
    view.start()
    for _ in range(5):
        view.frame()
    bare = build_bare(count, [int(v) for v in dpg.get_item_rect_size(view.editor)])

    def show(window: int) -> None:
        for other in (view.window, bare):
            dpg.configure_item(other, show=other == window)
        dpg.set_primary_window(window, True)

    # alternate short blocks so that load changes on a shared machine hit both sides alike
    app_times, bare_times = [], []
    block = 5
    for _ in range(max(1, frames // block)):
        show(bare)
        dpg.render_dearpygui_frame()  # the first frame after a switch lays the window out
        bare_times += time_frames(dpg.render_dearpygui_frame, block)
        show(view.window)
        view.frame()
        app_times += time_frames(view.frame, block)
    result = {"app_ms": 1000 * statistics.median(app_times), "bare_ms": 1000 * statistics.median(bare_times),
              "app_mean_ms": 1000 * statistics.fmean(app_times), "bare_mean_ms": 1000 * statistics.fmean(bare_times)}
    # one progress update (with a preview image), render-thread side: drain + redraw one node
    node_id = next(n for n in controller.graph.order if controller.shows_image(n))
    controller.follow(controller.session.id)
    preview = Image.new("RGB", (64, 64), "orange")
    costs, prepare = [], []
    for step in range(1, 101):
        start = time.perf_counter()
        invoker.services.events.emit(Event(NODE_PROGRESS, controller.session.id, node_id,
                                           {"step": step, "total": 100, "preview": preview}))
        prepare.append(time.perf_counter() - start)  # invoker thread side: thumbnail pixels
        start = time.perf_counter()
        controller.pump()
        view.refresh()
        costs.append(time.perf_counter() - start)
        if step % 10 == 0:
            view.frame()  # present now and then, outside the measured part
    result["progress_update_ms"] = 1000 * statistics.median(costs)
    result["progress_prepare_ms"] = 1000 * statistics.median(prepare)
    # zoom: one Ctrl+wheel step (repositions, rescales and re-fonts every node), then the next frame
    # (Dear PyGui lays the new sizes out), out through the levels and back in; then frames at 50%
    steps, next_frames = [], []
    x0, y0, x1, y1 = view.editor_area()
    cursor = ((x0 + x1) / 2, (y0 + y1) / 2)
    for direction in [-1] * 5 + [1] * 5:
        start = time.perf_counter()
        view.zoom(direction, cursor)
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        view.frame()
        next_frames.append(time.perf_counter() - start)
    view.vp.set_zoom(0.5, view.to_editor(cursor))
    view._apply_zoom()
    view.frame()
    zoomed = time_frames(view.frame, max(10, frames // 4))
    result["zoom_step_ms"] = 1000 * statistics.median(steps)
    result["zoom_step_max_ms"] = 1000 * max(steps)
    result["zoom_next_frame_ms"] = 1000 * statistics.median(next_frames)
    result["zoomed_frame_ms"] = 1000 * statistics.median(zoomed)
    result["torch"] = "torch" in sys.modules
    view.destroy()
    controller.close()
    invoker.shutdown()
    return result


# --- parent ---------------------------------------------------------------------------------


def start_xvfb() -> tuple[subprocess.Popen | None, str]:
    if os.environ.get("BENCH_DISPLAY"):
        return None, os.environ["BENCH_DISPLAY"]
    started = start_virtual_display(SIZE[0], SIZE[1] + 40)
    if started is None:
        sys.exit("Xvfb not found or did not start: apt-get install -y xvfb xauth libgl1-mesa-dri")
    return started


def run_child(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_frame(env: dict) -> tuple[float, str]:
    """Wall time from starting `python -m app.main` to its first rendered frame."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "app.main", "--frames", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = ""
    for line in proc.stderr:
        if line.startswith("first frame"):
            elapsed = time.perf_counter() - start
            break
    else:
        elapsed = float("nan")
    proc.wait(60)
    return elapsed, line.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,300,1000")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--child", nargs=2, metavar=("COUNT", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), int(args.child[1]))))
        return 0
    xvfb, display = start_xvfb()
    try:
        with tempfile.TemporaryDirectory() as root:
            env = {**os.environ, "DISPLAY": display, "INVOKE_NODES_ROOT": root, "PYTHONPATH": str(ROOT)}
            print(f"display {display}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), Mesa software OpenGL; "
                  f"frames per measurement: {args.frames}")
            print(f"{'nodes':>6} {'bare ms':>9} {'app ms':>9} {'app/bare':>9} {'progress update ms':>19}")
            results = []
            for count in (int(s) for s in args.sizes.split(",")):
                r = run_child(env, str(count), str(args.frames))
                results.append((count, r))
                ratio = r["app_ms"] / r["bare_ms"]
                print(f"{count:>6} {r['bare_ms']:>9.2f} {r['app_ms']:>9.2f} {ratio:>8.2f}x "
                      f"{r['progress_update_ms']:>19.3f}   (medians; means {r['bare_mean_ms']:.2f} / {r['app_mean_ms']:.2f};"
                      f" thumbnail prep on the invoker thread {r['progress_prepare_ms']:.2f} ms; torch={r['torch']})",
                      flush=True)
            print(f"{'nodes':>6} {'zoom step ms':>13} {'(max)':>7} {'next frame ms':>14} {'frame at 50% ms':>16}")
            for count, r in results:
                print(f"{count:>6} {r['zoom_step_ms']:>13.1f} {r['zoom_step_max_ms']:>7.1f} {r['zoom_next_frame_ms']:>14.1f}"
                      f" {r['zoomed_frame_ms']:>16.2f}")
            elapsed, line = first_frame(env)
            print(f"launch to first frame: {elapsed:.2f} s wall from process start (app says: {line})")
    finally:
        if xvfb is not None:
            xvfb.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
