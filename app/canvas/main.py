"""`invoke-nodes` (no arguments) / `invoke-nodes canvas [FILE]`: open the desktop canvas."""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from .system import display_problem

if TYPE_CHECKING:  # the real imports wait until a display is known to be there
    from services.invoker import Invoker

    from .controller import CanvasController
    from .recovery import Recovery
    from .view import CanvasView

_STARTED = time.perf_counter()  # launch-to-first-frame is measured from this module's import


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="invoke-nodes canvas", description="Open the node editor.")
    parser.add_argument("file", nargs="?", help="a session .json or a PNG made by invoke-nodes (default: the demo graph)")
    parser.add_argument("--frames", type=int, default=None, help="quit after this many frames (smoke tests, benchmarks)")
    parser.add_argument("--run", action="store_true", help="run the graph once the window is up")
    parser.add_argument("--screenshot", help="with --frames: write the last frame to this PNG")
    parser.add_argument("--size", default="1400x860", help="window size WIDTHxHEIGHT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    problem = display_problem()
    if problem is not None:
        print(f"invoke-nodes: cannot open the canvas: {problem}\n"
              "The other commands work without a display: invoke-nodes --help", file=sys.stderr)
        return 2
    invoker, controller, view, recovery = open_window(args)
    try:
        view.frame()
        print(f"first frame after {time.perf_counter() - _STARTED:.2f}s; torch imported: {'torch' in sys.modules}",
              file=sys.stderr)
        if args.run:
            controller.run()
        view.run(max_frames=args.frames)
        if args.screenshot:
            view.screenshot(args.screenshot)
        if view.found is None:
            recovery.discard()  # a clean quit leaves nothing to recover (an unanswered offer stays)
    finally:
        controller.save_last_workflow()  # opens again on the next start
        view.destroy()
        controller.close()
        invoker.shutdown()
    return 0


def open_window(args: argparse.Namespace) -> tuple[Invoker, CanvasController, CanvasView, Recovery]:
    """(invoker, controller, view, recovery) with the window up, as the app starts (the window
    tests start the same way): the file, else the last workflow, else the demo graph; then the
    offer to restore what a crashed canvas left unsaved (it takes precedence when accepted)."""
    # imported only now: the engine and Dear PyGui are not needed to print a display problem
    from services.config import Settings
    from services.container import RAY, WORKER, Services
    from services.invoker import Invoker

    from .controller import CanvasController
    from .recovery import Recovery
    from .view import CanvasView

    # Generation and restoration nodes run in the AI worker process: torch next to the window's
    # OpenGL driver can crash it (Mesa and triton each bring an LLVM), and a crashing node must not;
    # or on the Ray workers of the `cluster` setting.
    settings = Settings.load()
    invoker = Invoker(Services.local(settings, executor=RAY if settings.cluster else WORKER))
    controller = CanvasController(invoker)
    recovery = Recovery(controller.settings.data_dir / "recovery")
    found = recovery.find()  # read before anything here can change it
    open_start(controller, args.file)
    recovery.attach(controller)
    width, height = (int(v) for v in args.size.lower().split("x"))
    view = CanvasView(controller, width=width, height=height, recovery=recovery)
    view.start()
    if found is not None:
        view.offer_restore(found)
    return invoker, controller, view, recovery


def open_start(controller: "CanvasController", file: str | None) -> None:
    """What the window shows first: the file asked for; else the last workflow (as it was on
    quit); the demo graph only on the very first start (or when the file cannot be opened)."""
    if file and controller.open(file):
        return
    opened_error = controller.message if file else None
    if file or not controller.restore_last_workflow():
        controller.new_demo()
    if opened_error:
        controller.report_error(opened_error)


if __name__ == "__main__":
    sys.exit(main())
