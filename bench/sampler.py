"""Where the wall time of a stretch of Python goes, in every thread: a sampler of stacks.

The AI work runs on the invoker's worker and compile threads, out of reach of cProfile (one thread)
and with no py-spy on the GPU machine; sampling `sys._current_frames()` sees them all."""
from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path

OURS = {"app", "nodes", "services", "bench", "core", "engine", "executors", "models"}  # this repo's folders
IDLE = {"threading.py:wait", "queue.py:get", "selectors.py:select", "threading.py:_wait_for_tstate_lock"}


def _where(code) -> str:
    path = Path(code.co_filename)
    return f"{path.parent.name}/{path.name}:{code.co_name}"


class StackSampler:
    """Every `interval` seconds, for each busy thread: the innermost function of this repo on its
    stack (`ours`) and the innermost function of all (`leaf`)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.ours: Counter[str] = Counter()
        self.leaf: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="stack-sampler", daemon=True)

    def __enter__(self) -> "StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                leaf = _where(frame.f_code)
                if ident == me or leaf.split("/", 1)[-1] in IDLE:
                    continue
                self.leaf[leaf] += 1
                while frame is not None and Path(frame.f_code.co_filename).parent.name not in OURS:
                    frame = frame.f_back
                self.ours[_where(frame.f_code) if frame is not None else "(outside this repo)"] += 1

    def report(self, rows: int = 20) -> dict[str, list[tuple[str, float]]]:
        """Seconds of busy samples per function, the most first."""
        def seconds(counter: Counter[str]) -> list[tuple[str, float]]:
            return [(name, round(count * self.interval, 2)) for name, count in counter.most_common(rows)]

        return {"ours": seconds(self.ours), "leaf": seconds(self.leaf)}
