"""`invoke-nodes cli`: an interactive prompt on one session, or `-c 'LINE'` for one line.

Every node is a command (see app.cli_schema); `a | b | c` adds nodes in order, each linked to
the one before with `*` semantics, then runs the session.  A whole line is added or nothing:
it is validated on a copy of the graph first, so a bad option anywhere leaves the session as it was.

No Dear PyGui and no torch here: torch loads only when a node that needs it runs.
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from nodes.base import REGISTRY, Port
from services.container import Services
from services.engine.graph import GraphError
from services.invoker import Invoker
from services.engine.session import Session
from services.stores.sessions import SessionFileError, write_session_file

from .cli_progress import RunReporter
from .cli_schema import (COMMON_NAMES, CommandError, ParsedCommand, command_help, commands_overview, last_segment,
                         option_name, parse_command, parse_value, shown, split_pipeline)

PROMPT = "invoke> "
HISTORY_FILE = "cli_history"
HISTORY_LENGTH = 2000

# exit codes of -c / scripted input
OK, NODE_FAILED, BAD_INPUT = 0, 1, 2


class Quit(Exception):
    """`quit` / `exit` was typed."""


def set_field(session: Session, assignment: str, command: str = "set") -> Session:
    """'NODE.FIELD=VALUE' -> a forked session with that value (the option text rules apply).
    `command` names what was typed in error messages ("set" at the prompt, "--set" headless)."""
    target, has_value, text = assignment.partition("=")
    node_id, dot, field = target.partition(".")
    if not (has_value and dot and node_id and field):
        raise CommandError(command, None, f"expected NODE.FIELD=VALUE, got {assignment!r}")
    node = session.graph.nodes.get(node_id)
    if node is None:
        raise CommandError(command, target, f"no node '{node_id}' (nodes are {', '.join(session.graph.order) or 'none'})")
    port = node.cls.inputs().get(field)
    if port is None:
        raise CommandError(command, target, f"{node.type} has no input '{field}' (inputs are {', '.join(node.cls.inputs())})")
    try:
        return session.set_value(node_id, field, parse_value(port, text))
    except (GraphError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, GraphError) else str(exc)
        raise CommandError(command, target, f"{reason} (got {shown(text)})") from None


class Shell:
    """Executes lines on one session; the prompt loop, -c and tests all go through `execute`."""

    def __init__(self, invoker: Invoker, out: TextIO | None = None, err: TextIO | None = None, *,
                 open_viewer: bool = True) -> None:
        self.invoker = invoker
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.open_viewer = open_viewer
        self.session = invoker.create_session()
        # name -> (handler taking the words after the name, usage, help)
        self.session_commands: dict[str, tuple[Callable[[list[str]], int], str, str]] = {
            "help": (self.cmd_help, "help [CMD]", "list commands, or show a command's options"),
            "history": (self.cmd_history, "history", "nodes of this session with ids, state and links"),
            "run": (self.cmd_run, "run", "run the session again (finished nodes are skipped, failed ones retried)"),
            "set": (self.cmd_set, "set NODE.FIELD=VALUE", "change a value (a new session; unchanged nodes come from the cache)"),
            "save": (self.cmd_save, "save FILE [--overwrite]", "save the session as JSON (--overwrite replaces a file)"),
            "load": (self.cmd_load, "load FILE", "open a saved session or a PNG made by invoke-nodes"),
            "new": (self.cmd_new, "new", "start an empty session"),
            "models": (self.cmd_models, "models [KIND]", "models found in the models folders (one kind: main, vae, lora, "
                       "embedding, upscaler, face_restore, controlnet, t2i_adapter, ip_adapter, clip_vision), "
                       "and files that are not models (and why)"),
            "quit": (self.cmd_quit, "quit", "leave (also: exit, Ctrl-D)"),
            "exit": (self.cmd_quit, "exit", "leave"),
        }

    # --- lines ---------------------------------------------------------------------------------

    def execute(self, line: str) -> int:
        """Run one line; returns OK, NODE_FAILED or BAD_INPUT.  Raises Quit."""
        try:
            pipeline = split_pipeline(line)
            if not pipeline:
                return OK
            head = pipeline[0][0]
            if head in self.session_commands:
                if len(pipeline) > 1:
                    raise CommandError(head, None, "session commands cannot be piped")
                return self.session_commands[head][0](pipeline[0][1:])
            commands = [parse_command(words) for words in pipeline]
            for command in commands:
                if command.help:
                    self.print(command_help(REGISTRY[command.node_type]))
                    return OK
            self.add(commands)
        except CommandError as exc:
            self.error(str(exc))
            return BAD_INPUT
        return self.run_session()

    def add(self, commands: list[ParsedCommand]) -> list[str]:
        """Add the commands' nodes to the session, all or none."""
        with self.session.lock:
            trial = self.session.graph.copy()
        added = []
        for command in commands:
            links: list[Any] = list(command.links)
            if command.auto_link and len(trial):
                links.append((-1, "*", "*"))
            data = {"type": command.node_type, **command.values}
            if command.node_id is not None:
                if command.node_id in trial.nodes:  # named here: the graph's message would not say --id
                    raise CommandError(command.node_type, "--id", f"a node '{command.node_id}' already exists")
                data["id"] = command.node_id
            try:
                added.append(trial.add_node(data, links).id)
            except GraphError as exc:
                raise self._command_error(command, exc) from None
        # the trial resolved ids, random seeds and `*` links; the session gets exactly those
        for node_id in added:
            links = [(l.from_node, l.from_field, l.to_field) for l in trial.links_in[node_id]]
            self.session.add_node(trial.nodes[node_id].to_dict(), links)
        return added

    @staticmethod
    def _command_error(command: ParsedCommand, exc: GraphError) -> CommandError:
        """Name the option the engine's complaint is about."""
        field = exc.field
        if field is not None and field in command.texts:
            return CommandError(command.node_type, option_name(field), f"{exc.reason} (got {shown(command.texts[field])})")
        if command.links and (field is None or any(to == field for _, _, to in command.links)):
            return CommandError(command.node_type, "--link", exc.reason)
        return CommandError(command.node_type, option_name(field) if field else None, exc.reason)

    def run_session(self) -> int:
        """Run every node not finished yet on the invoker's thread, reporting as it goes."""
        session = self.session
        reporter = RunReporter(self.invoker.images, session, self.out, self.err, open_viewer=self.open_viewer)
        try:
            self.invoker.run_and_wait(session, reporter)
        except KeyboardInterrupt:  # Ctrl-C stops the run, not the prompt
            self.error("canceled with Ctrl-C; 'run' goes on from there")
        finally:
            reporter.close()
        return NODE_FAILED if reporter.failures else OK

    # --- session commands ------------------------------------------------------------------

    def cmd_help(self, args: list[str]) -> int:
        if not args:
            self.print(commands_overview({usage: text for _, usage, text in self.session_commands.values()}))
            return OK
        name = args[0]
        if name in self.session_commands:
            _, usage, text = self.session_commands[name]
            self.print(f"{usage}: {text}")
            return OK
        cls = REGISTRY.get(name)
        if cls is None:
            parse_command([name])  # raises the unknown-command error with its suggestion
        self.print(command_help(cls))
        return OK

    def cmd_history(self, args: list[str]) -> int:
        self._no_args("history", args)
        graph = self.session.graph
        if not graph.order:
            self.print("the session is empty")
        for node_id in graph.order:
            node = graph.nodes[node_id]
            values = " ".join(f"--{k} {shlex.quote(_text(v))}" for k, v in node.values.items())
            links = " ".join(f"{l.to_field}<-{l.from_node}.{l.from_field}" for l in graph.links_in[node_id])
            state = self.session.node_state(node_id)
            parts = [f"{node_id:>4}  {node.type:<14} {state:<9}", values, f"links: {links}" if links else ""]
            self.print("  ".join(p for p in parts if p))
        return OK

    def cmd_run(self, args: list[str]) -> int:
        self._no_args("run", args)
        self._say_stale(self.invoker.mark_stale(self.session))
        if self.session.is_complete():
            self.print("nothing to run: every node has finished (change one with 'set')")
            return OK
        return self.run_session()

    def cmd_set(self, args: list[str]) -> int:
        if len(args) != 1:
            raise CommandError("set", None, "usage: set NODE.FIELD=VALUE")
        self._switch(set_field(self.session, args[0]))
        return self.run_session()

    def cmd_save(self, args: list[str]) -> int:
        overwrite = "--overwrite" in args
        path = self._one_path("save", [a for a in args if a != "--overwrite"])
        if path.exists() and not overwrite:
            raise CommandError("save", None, f"{path} exists; 'save {shlex.quote(str(path))} --overwrite' replaces it")
        try:
            write_session_file(self.session, path)
        except OSError as exc:
            raise CommandError("save", None, f"{path}: {exc.strerror or exc}") from None
        self.print(f"saved {len(self.session.graph)} nodes to {path}")
        return OK

    def cmd_load(self, args: list[str]) -> int:
        path = self._one_path("load", args)
        try:
            self.session = self.invoker.open_session(path)
        except SessionFileError as exc:
            raise CommandError("load", None, str(exc)) from None
        self.print(f"loaded {len(self.session.graph)} nodes from {path}; 'history' lists them, 'run' runs what is not finished")
        self._say_stale(self.invoker.mark_stale(self.session))
        return OK

    def _say_stale(self, node_ids: list[str]) -> None:
        if node_ids:
            self.print(f"stale (their images, or their inputs' images, are gone; 'run' makes them again): {', '.join(node_ids)}")

    def cmd_models(self, args: list[str]) -> int:
        if len(args) > 1:
            raise CommandError("models", None, "takes at most one word: the kind")
        try:
            models = self.invoker.list_models(args[0] if args else None)
        except ValueError as exc:  # an unknown kind
            raise CommandError("models", None, str(exc)) from None
        for info in models:
            use = f"  (in a prompt: embedding:{info.name})" if info.kind == "embedding" else ""
            self.print(f"{info.id:<28} {info.kind:<12} {info.base or '':<5} {info.path}{use}")
        if not models:
            self.print("no models found")
        if not args:
            for item in self.invoker.unrecognized_models():
                self.print(f"not a model: {item.path}: {item.reason}")
        return OK

    def cmd_new(self, args: list[str]) -> int:
        self._no_args("new", args)
        self._switch(Session())
        self.print("new empty session")
        return OK

    def cmd_quit(self, args: list[str]) -> int:
        raise Quit()

    def _switch(self, session: Session) -> None:
        self.session = self.invoker.add_session(session)

    @staticmethod
    def _no_args(name: str, args: list[str]) -> None:
        if args:
            raise CommandError(name, None, f"takes no arguments (got {' '.join(args)!r})")

    @staticmethod
    def _one_path(name: str, args: list[str]) -> Path:
        if len(args) != 1:
            raise CommandError(name, None, f"usage: {name} FILE")
        return Path(args[0]).expanduser()

    # --- output ----------------------------------------------------------------------------

    def print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.err, flush=True)

    # --- completion ------------------------------------------------------------------------

    def completions(self, line: str, text: str) -> list[str]:
        """Candidates for the word `text` that ends `line` (the line up to the cursor)."""
        segment = last_segment(line)
        words = _words(segment[: len(segment) - len(text)])
        first_segment = segment == line
        if not words:
            names = sorted(REGISTRY) + (sorted(self.session_commands) if first_segment else [])
            return [n for n in names if n.startswith(text)]
        head = words[0]
        if head in ("save", "load"):
            return _paths(text)
        if head == "help":
            return [n for n in sorted(REGISTRY) + sorted(self.session_commands) if n.startswith(text)]
        cls = REGISTRY.get(head)
        if cls is None:
            return []
        ports = cls.inputs()
        if text.startswith("--") and "=" in text:
            key, _, value = text.partition("=")
            port = ports.get(key[2:].replace("-", "_"))
            return [f"{key}={v}" for v in self.value_candidates(port, value)] if port else []
        if text.startswith("-"):
            used = {w for w in words if w.startswith("--")}
            options = [option_name(n) for n in ports] + list(COMMON_NAMES)
            return [o for o in options if o.startswith(text) and (o not in used or o == "--link")]  # --link repeats
        previous = words[-1]
        if previous.startswith("--") and "=" not in previous:
            port = ports.get(previous[2:].replace("-", "_"))
            if port is not None:
                return self.value_candidates(port, text)
        return []

    def value_candidates(self, port: Port, text: str) -> list[str]:
        if port.choices is not None:
            values = [str(c) for c in port.choices]
        elif port.tag == "bool":
            values = ["true", "false"]
        elif port.kind == "path":
            return _paths(text)
        elif port.kind == "model":
            values = self._model_ids(port.model_kind)
        else:
            return []
        return [v for v in values if v.startswith(text)]

    def _model_ids(self, model_kind: str | None) -> list[str]:
        """Model ids for completion, asked of the model manager only now (it is created lazily)."""
        try:
            return sorted(model.id for model in self.invoker.list_models(model_kind))
        except Exception:  # noqa: BLE001 - a broken models folder must not break the prompt
            return []


def _text(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value.values())))  # {"image_name": x} -> x, as typed
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an open quote while typing
        return text.split()


def _paths(text: str) -> list[str]:
    matches = glob.glob(os.path.expanduser(text) + "*")
    return sorted(m + os.sep if os.path.isdir(m) else m for m in matches)


# --------------------------------------------------------------------------------------------
# The prompt


def _setup_readline(shell: Shell, history: Path) -> Callable[[], None]:
    """Tab completion and persistent history; returns the function that saves the history."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: a plain prompt
        return lambda: None
    matches: list[str] = []

    def complete(text: str, state: int) -> str | None:
        nonlocal matches
        if state == 0:
            found = shell.completions(readline.get_line_buffer()[: readline.get_endidx()], text)
            # Python's readline appends nothing to a completed word; a finished word gets its space
            # here (a folder does not: its contents come next)
            matches = [m if m.endswith(os.sep) else m + " " for m in found]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n|")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    readline.set_history_length(HISTORY_LENGTH)
    try:
        readline.read_history_file(history)
    except OSError:
        pass  # no history yet

    def save() -> None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError as exc:
            print(f"warning: cannot save the command history to {history}: {exc}", file=sys.stderr)

    return save


def interact(shell: Shell, stdin: TextIO) -> int:
    tty = stdin.isatty()
    save_history = _setup_readline(shell, shell.invoker.settings.data_dir / HISTORY_FILE) if tty else (lambda: None)
    if tty:
        shell.print("invoke-nodes cli: 'help' lists commands, Tab completes, Ctrl-D leaves")
    worst = OK
    try:
        while True:
            try:
                line = input(PROMPT) if tty else stdin.readline()
            except EOFError:
                break
            except KeyboardInterrupt:
                shell.print("")
                continue
            if not tty and not line:
                break
            try:
                worst = max(worst, shell.execute(line.rstrip("\n")))
            except Quit:
                break
            except KeyboardInterrupt:  # a second Ctrl-C while a canceled run winds down
                shell.error("interrupted")
    finally:
        save_history()
        if tty:
            shell.print("")
    return OK if tty else worst  # a script fed on stdin reports its failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoke-nodes cli", description="Node commands at a prompt (type 'help').")
    parser.add_argument("-c", "--command", action="append", metavar="LINE",
                        help="run LINE and exit (repeat to run several lines on one session); "
                             "exit code 1 if a node failed, 2 for bad input")
    parser.add_argument("--load", metavar="FILE", help="start with a saved session or a PNG made by invoke-nodes")
    parser.add_argument("--no-viewer", action="store_true", help="print show_image paths instead of opening a viewer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    invoker = Invoker(Services.local())
    for problem in invoker.plugin_errors:
        print(f"warning: {problem}", file=sys.stderr)
    shell = Shell(invoker, open_viewer=not args.no_viewer)
    try:
        if args.load and shell.execute(f"load {shlex.quote(args.load)}") != OK:
            return BAD_INPUT
        if args.command is None:
            return interact(shell, sys.stdin)
        for line in args.command:
            code = shell.execute(line)
            if code != OK:
                return code
        return OK
    except Quit:
        return OK
    finally:
        invoker.shutdown()
