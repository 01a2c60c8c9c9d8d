"""The log file: where tracebacks go.  A user's screen gets one line naming what failed and why;
the details (the traceback of an unexpected error) are kept in `<data dir>/logs/invoke-nodes.log`."""
from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOG_NAME = "invoke-nodes.log"


def log_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "logs" / LOG_NAME


def failure_line(node_id: str, node_type: str, exc: BaseException, data_dir: str | Path) -> str:
    """The one line a user sees when a node fails in a way it did not report as bad input: the node,
    the error, and where its traceback is (the log file, never the screen)."""
    lines = str(exc).strip().splitlines()
    text = f": {lines[0][:300]}" if lines else ""
    return f"node '{node_id}' ({node_type}): unexpected {type(exc).__name__}{text} (traceback in {log_path(data_dir)})"


def setup(data_dir: str | Path) -> Path | None:
    """Send warnings and errors of every logger to the log file instead of the terminal (Python's
    last-resort handler prints them, tracebacks included, on stderr).  Returns the file, or None
    when it cannot be opened (then the terminal keeps them)."""
    path = log_path(data_dir)
    root = logging.getLogger()
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 2**20, backupCount=2, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # library FutureWarnings go to the file, not to the user
    return path
