"""Test-only nodes that run in the AI worker process (imported there by module name)."""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import ClassVar, Literal

from PIL import Image

from nodes.base import BaseInvocation, InputField
from nodes.context import InvocationContext
from nodes.outputs import IntOutput, StringOutput

BALLAST: list[bytearray] = []  # memory the worker holds until it stops


class WorkerPidInvocation(BaseInvocation):
    """The pid of the process it ran in (optionally holding `hold_mb` of memory there)."""

    type: Literal["test_worker_pid"] = "test_worker_pid"
    category: ClassVar[str] = "test"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    hold_mb: int = InputField(0, ge=0)

    def invoke(self, context: InvocationContext) -> IntOutput:
        if self.hold_mb:
            BALLAST.append(bytearray(os.urandom(1024)) * (self.hold_mb * 1024))
        return IntOutput(value=os.getpid())


class WorkerCrashInvocation(BaseInvocation):
    """Kills its own process: a segfault (SIGSEGV sent to itself) or os._exit(3)."""

    type: Literal["test_worker_crash"] = "test_worker_crash"
    category: ClassVar[str] = "test"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    how: Literal["segfault", "exit"] = InputField("segfault")

    def invoke(self, context: InvocationContext) -> IntOutput:
        if self.how == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(10)
        os._exit(3)


class WorkerStepsInvocation(BaseInvocation):
    """A stand-in for a denoise loop: `steps` steps of `step_s` seconds, a preview every step."""

    type: Literal["test_worker_steps"] = "test_worker_steps"
    category: ClassVar[str] = "test"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    steps: int = InputField(100, ge=1)
    step_s: float = InputField(0.05, ge=0)

    def invoke(self, context: InvocationContext) -> IntOutput:
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            context.progress(step, self.steps, f"step {step}", preview=Image.new("RGB", (512, 512), (step % 256, 0, 0)))
        return IntOutput(value=self.steps)


class WorkerHangInvocation(BaseInvocation):
    """Sleeps without reporting anything."""

    type: Literal["test_worker_hang"] = "test_worker_hang"
    category: ClassVar[str] = "test"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    seconds: float = InputField(60.0)

    def invoke(self, context: InvocationContext) -> IntOutput:
        time.sleep(self.seconds)
        return IntOutput(value=0)


class WorkerModulesInvocation(BaseInvocation):
    """Which of the comma-separated module names are imported in the process it runs in."""

    type: Literal["test_worker_modules"] = "test_worker_modules"
    category: ClassVar[str] = "test"
    cacheable: ClassVar[bool] = False
    runs_in_worker: ClassVar[bool] = True
    names: str = InputField("")

    def invoke(self, context: InvocationContext) -> StringOutput:
        return StringOutput(value=",".join(name for name in self.names.split(",") if name in sys.modules))
