"""`invoke-nodes` entry point: no arguments opens the canvas; subcommands start the other apps.

Each app module is imported only when chosen, so the CLI never loads Dear PyGui and nothing
here loads torch.
"""
from __future__ import annotations

import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

# subcommand -> (module with a main(argv) function, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "canvas": ("app.canvas.main", "open the desktop node editor (the default)"),
    "cli": ("app.cli", "interactive prompt; -c 'LINE' runs one line"),
    "run": ("app.headless", "run a saved session or PNG-embedded graph headless"),
    "api": ("app.api.server", "serve the HTTP API with live events"),
    "make-demo-models": ("services.models.demo", "write tiny random-weight models to try every node"),
}


def app_version() -> str:
    try:
        return version("invoke-nodes")
    except PackageNotFoundError:
        return "0.0.0+source"


def usage() -> str:
    lines = ["usage: invoke-nodes [COMMAND] [ARGS...]", "", "commands:"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "  --version          print the version", "  --help             this text"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # a frozen build starting the AI worker runs it here, then exits
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-V", "--version"):
        print(f"invoke-nodes {app_version()}")
        return 0
    if args and args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command = "canvas"
    if args and not args[0].startswith("-"):
        command = args.pop(0)
    if command not in COMMANDS:
        print(f"invoke-nodes: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    from services.config import Settings
    from services.logfile import setup

    setup(Settings.load().data_dir)  # tracebacks go to the log file, not the user's terminal
    module = import_module(COMMANDS[command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
