"""`invoke-nodes run FILE [--set NODE.FIELD=VALUE ...] [--out DIR]`: run a saved session, the
graph embedded in a PNG made by invoke-nodes, or a ComfyUI / AUTOMATIC1111 / InvokeAI workflow or
PNG (imported: the report goes to stderr), without a prompt, and write the result images.

Exit codes: 0 every node finished; 1 a node failed (the node and the reason go to stderr);
2 the file or an argument could not be used.  Progress and node lines go to stderr, the paths
of the written images to stdout (one per line, for scripts).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nodes.core.untrusted import MAX_JSON_BYTES, regular_file
from services.container import EXECUTOR_KINDS, IN_PROCESS, Services
from services.importers import ImportFormatError, detect
from services.stores.images import ImageStore
from services.fsutil import atomic_copy
from services.invoker import Invoker
from services.engine.session import DONE_STATES, Session
from services.stores.sessions import SessionFileError, read_session_file

from .cli import set_field
from .cli_progress import RunReporter, image_paths
from .cli_schema import CommandError

OK, NODE_FAILED, BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invoke-nodes run", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a session .json saved by invoke-nodes, a PNG it made, or a ComfyUI, "
                                     "AUTOMATIC1111 or InvokeAI workflow / PNG")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.FIELD=VALUE",
                        help="change an input value before running (repeatable)")
    parser.add_argument("--out", metavar="DIR", default="outputs",
                        help="folder the result images are copied into (default: ./outputs)")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS, default=IN_PROCESS,
                        help="where generation nodes run: this process (default), or the AI worker process, "
                             "where a crash fails the node instead of the run")
    parser.add_argument("--all", action="store_true",
                        help="copy every node's images, not only those of the last nodes of each branch")
    return parser


def load(invoker: Invoker, path: str) -> Session:
    """The session in the file: ours as saved, or imported from another tool (its report to stderr).
    Raises SessionFileError or ImportFormatError, naming the file."""
    try:
        with open(regular_file(path), "rb") as handle:
            head = handle.read(MAX_JSON_BYTES + 1)
    except (OSError, ValueError):
        return read_session_file(path)  # says why, naming the file
    try:
        foreign = detect(head, Path(path).name)
    except ImportFormatError:
        foreign = None  # not another tool's file either: the session reader says why
    if foreign is None:
        return read_session_file(path)
    session, report = invoker.import_graph(head, str(Path(path).resolve()))
    print(f"imported: {report.summary()}", file=sys.stderr)
    return session


def prepare(path: str, assignments: list[str], loaded: Session | None = None) -> tuple[Session, Session]:
    """(the session as read, the session to run: its graph with the --set values and no results)."""
    loaded = loaded if loaded is not None else read_session_file(path)
    session = loaded
    for assignment in assignments:
        session = set_field(session, assignment, "--set")
    # always run afresh: results saved in the file are reused through the output cache when
    # their images still exist (Invoker.add_session warms it), and recomputed otherwise
    fresh = Session(session.graph.copy(), parent_id=loaded.id, change="headless run")
    return loaded, fresh


def result_nodes(session: Session, everything: bool) -> list[str]:
    """Nodes whose images are the results: the ends of the graph (no outgoing links)."""
    graph = session.graph
    return [n for n in graph.order if everything or not graph.links_out[n]]


def copy_images(images: ImageStore, session: Session, nodes: list[str], out: Path) -> list[Path]:
    """Copy the nodes' images as NODE-TYPE.png, numbered NODE-TYPE-K.png where a node has several
    (node ids hold no path separators: the graph refuses them)."""
    written: list[Path] = []
    for node_id in nodes:
        node = session.graph.nodes[node_id]
        rows = [r for r in session.results.get(node_id, ()) if r.state in DONE_STATES and r.outputs]
        sources = [path for row in rows for path in image_paths(images, session, node_id, row.outputs)]
        if sources:
            out.mkdir(parents=True, exist_ok=True)
        for number, source in enumerate(sources):
            target = out / (f"{node_id}-{node.type}-{number}.png" if len(sources) > 1 else f"{node_id}-{node.type}.png")
            atomic_copy(source, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    invoker = Invoker(Services.local(executor=args.executor))
    for problem in invoker.plugin_errors:
        print(f"warning: {problem}", file=sys.stderr)
    try:
        loaded, session = prepare(args.file, args.set, load(invoker, args.file))
    except (SessionFileError, ImportFormatError, CommandError) as exc:
        print(f"invoke-nodes run: {exc}", file=sys.stderr)
        return BAD_INPUT
    invoker.add_session(loaded)
    invoker.add_session(session)
    reporter = RunReporter(invoker.images, session, sys.stderr, sys.stderr, open_viewer=False)
    try:
        finished = invoker.run_and_wait(session, reporter)
    except KeyboardInterrupt:
        print("invoke-nodes run: interrupted", file=sys.stderr)
        return 130
    finally:
        reporter.close()
        invoker.shutdown()
    if not finished:
        print("invoke-nodes run: canceled", file=sys.stderr)
        return NODE_FAILED
    failed = [f for f in reporter.failures if f.state != "skipped"] or reporter.failures
    for failure in failed:
        print(f"invoke-nodes run: node '{failure.node_id}' ({failure.node_type}) {failure.state}: {failure.reason}", file=sys.stderr)
    try:  # a failed branch does not lose what the others made
        written = copy_images(invoker.images, session, result_nodes(session, args.all), Path(args.out))
    except OSError as exc:
        print(f"invoke-nodes run: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return BAD_INPUT
    for path in written:
        print(path)
    return NODE_FAILED if failed else OK
