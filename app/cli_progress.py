"""Reporting a session run in a terminal: a tqdm bar per node from its progress events, one line
per finished node with its outputs (images as stored file paths), and `show_image` opened in the
system viewer.  Used by the interactive CLI and by headless runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from nodes.base import PIN_TYPES
from services.stores.images import ImageStore
from services.engine.events import NODE_COMPLETED, NODE_FAILED, NODE_PROGRESS, Event
from services.engine.session import Session

# The one node the CLI treats specially, as its docstring promises: it opens its image.
VIEWER_NODE = "show_image"


def has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_viewer(path: Path) -> bool:
    """Open a file with the system viewer; False when there is no display or no opener."""
    if not has_display():
        return False
    if sys.platform == "win32":
        os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606 - the user's own output file
        return True
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener) is None:
        return False
    # detached: the viewer outlives the prompt and its output must not mix with ours
    subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    return True


@dataclass(frozen=True)
class Failure:
    node_id: str
    node_type: str
    state: str
    error: str

    @property
    def reason(self) -> str:
        """The error without the node and state the line already names."""
        prefix = f"node '{self.node_id}' ({self.node_type}), "
        error = self.error[len(prefix):] if self.error.startswith(prefix) else self.error
        return error.removeprefix(f"{self.state}: ")

    def line(self) -> str:
        reason = self.reason
        return f"[{self.node_id}] {self.node_type} {self.state}" + (f": {reason}" if reason != self.state else "")


class RunReporter:
    """An event subscriber for one session run.  Events arrive on the invoker's thread."""

    def __init__(self, images: ImageStore, session: Session, out: TextIO | None = None, err: TextIO | None = None, *,
                 open_viewer: bool = True) -> None:
        self.images = images
        self.session = session
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.open_viewer = open_viewer
        self.failures: list[Failure] = []
        self._bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.type == NODE_PROGRESS:
                self._progress(event)
            elif event.type == NODE_COMPLETED:
                self._close_bar(event.node_id)
                self._completed(event)
            elif event.type == NODE_FAILED:
                self._close_bar(event.node_id)
                node = self.session.graph.nodes[event.node_id]
                failure = Failure(node.id, node.type, event.data.get("state", "failed"), event.data.get("error") or "")
                self.failures.append(failure)
                self._write(failure.line(), self.err)

    def close(self) -> None:
        with self._lock:
            for node_id in list(self._bars):
                self._close_bar(node_id)

    def _label(self, node_id: str) -> str:
        return f"[{node_id}] {self.session.graph.nodes[node_id].type}"

    def _progress(self, event: Event) -> None:
        total = int(event.data.get("total") or 0)
        bar = self._bars.get(event.node_id)
        if bar is None:
            bar = self._bars[event.node_id] = tqdm(total=total or None, desc=self._label(event.node_id),
                                                   unit="step", leave=False, dynamic_ncols=True, file=self.err)
        if total and bar.total != total:
            bar.total = total
        bar.n = int(event.data.get("step") or 0)
        message = event.data.get("message")
        if message:
            bar.set_postfix_str(str(message), refresh=False)
        bar.refresh()

    def _close_bar(self, node_id: str | None) -> None:
        bar = self._bars.pop(node_id, None) if node_id is not None else None
        if bar is not None:
            bar.close()

    def _completed(self, event: Event) -> None:
        node_id = event.node_id
        outputs = event.data.get("outputs") or {}
        items = [f"{name}={text}" for name, text in self.describe_outputs(node_id, outputs)]
        index = event.data.get("index")
        where = f" #{','.join(str(i) for _, i in index)}" if index else ""
        self._write(f"{self._label(node_id)}{where} {event.data.get('state', 'completed')}: {'  '.join(items)}")
        if self.session.graph.nodes[node_id].type == VIEWER_NODE:
            for path in image_paths(self.images, self.session, node_id, outputs):
                if not (self.open_viewer and open_in_viewer(path)):
                    self._write(f"show_image: {path}")

    def describe_outputs(self, node_id: str, outputs: dict[str, Any]) -> list[tuple[str, str]]:
        described = []
        for name, value in outputs.items():
            paths = output_images(self.images, self.session, node_id, name, value)
            if paths:
                described.append((name, ",".join(str(p) for p in paths)))
            else:
                text = repr(value) if isinstance(value, str) else str(value)
                described.append((name, text if len(text) <= 80 else text[:77] + "..."))
        return described

    def _write(self, line: str, stream: TextIO | None = None) -> None:
        stream = stream or self.out
        # tqdm.write keeps the line from tearing through a bar that is being drawn
        tqdm.write(line, file=stream)
        stream.flush()


def output_images(images: ImageStore, session: Session, node_id: str, name: str, value: Any) -> list[Path]:
    """Stored files of an output whose pin type is image or list[image] (`any` pins narrowed too)."""
    tag = session.graph.output_tag(node_id, name)
    refs = [value] if tag == "image" else value if tag == "list[image]" and isinstance(value, list) else []
    key = PIN_TYPES["image"].key
    return [images.path(ref[key]) for ref in refs if isinstance(ref, dict) and ref.get(key)]


def image_paths(images: ImageStore, session: Session, node_id: str, outputs: dict[str, Any]) -> list[Path]:
    return [path for name, value in outputs.items() for path in output_images(images, session, node_id, name, value)]
