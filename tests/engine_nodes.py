"""Test-only nodes that count their runs, fail on request, run until canceled or keep an object."""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import ClassVar, Literal

from nodes.base import BaseInvocation, BaseInvocationOutput, InputField, LatentsField, OutputField
from nodes.outputs import IntOutput

RUNS: Counter[str] = Counter()
STARTED = threading.Event()


class CountingInvocation(BaseInvocation):
    """Adds one to its input and counts how often it really ran."""

    type: Literal["test_counting"] = "test_counting"
    category: ClassVar[str] = "test"
    value: int = InputField(0)
    tag: str = InputField("")

    def invoke(self, context) -> IntOutput:
        RUNS[self.tag or self.id] += 1
        return IntOutput(value=self.value + 1)


class FailingInvocation(BaseInvocation):
    """Raises when `fail` is set."""

    type: Literal["test_failing"] = "test_failing"
    category: ClassVar[str] = "test"
    fail: bool = InputField(True)

    def invoke(self, context) -> IntOutput:
        if self.fail:
            raise RuntimeError("boom on purpose")
        return IntOutput(value=1)


class SlowInvocation(BaseInvocation):
    """Reports progress every 10 ms for up to `steps` steps (stops when canceled)."""

    type: Literal["test_slow"] = "test_slow"
    category: ClassVar[str] = "test"
    steps: int = InputField(1000)

    def invoke(self, context) -> IntOutput:
        STARTED.set()
        for step in range(self.steps):
            time.sleep(0.01)
            context.progress(step + 1, self.steps, "working")
        return IntOutput(value=self.steps)


class LatentsOutput(BaseInvocationOutput):
    latents: LatentsField = OutputField(description="A list held by the object store")


class ObjectInvocation(BaseInvocation):
    """Keeps a list in the object store (as generation nodes keep latents) and counts its runs."""

    type: Literal["test_object"] = "test_object"
    category: ClassVar[str] = "test"
    tag: str = InputField("")

    def invoke(self, context) -> LatentsOutput:
        RUNS[self.tag or self.id] += 1
        return LatentsOutput(latents=LatentsField(latents_name=context.objects.put([1, 2, 3], "latents")))
