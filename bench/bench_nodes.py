"""Nodes for the benchmarks: trivial work that crosses to the AI worker process."""
from __future__ import annotations

import time
from typing import ClassVar, Literal

from PIL import Image

from nodes.base import BaseInvocation, InputField
from nodes.context import InvocationContext
from nodes.outputs import IntOutput


class WorkerAddInvocation(BaseInvocation):
    """a + 1, in the AI worker: what a node costs when it crosses the process boundary."""

    type: Literal["bench_worker_add"] = "bench_worker_add"
    category: ClassVar[str] = "bench"
    runs_in_worker: ClassVar[bool] = True
    a: int = InputField(0)

    def invoke(self, context: InvocationContext) -> IntOutput:
        return IntOutput(value=self.a + 1)


class WorkerPreviewsInvocation(BaseInvocation):
    """`steps` progress reports with a 512x512 preview, `step_s` apart; the message is the time of the call."""

    type: Literal["bench_worker_previews"] = "bench_worker_previews"
    category: ClassVar[str] = "bench"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    steps: int = InputField(40)
    step_s: float = InputField(0.1)

    def invoke(self, context: InvocationContext) -> IntOutput:
        frame = Image.effect_noise((512, 512), 64).convert("RGB")
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            context.progress(step, self.steps, repr(time.time()), preview=frame)
        return IntOutput(value=self.steps)
