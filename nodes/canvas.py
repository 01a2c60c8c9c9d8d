"""Nodes that organise a canvas rather than compute: reroute (a dot a link passes through) and
note (free text).  Both are ordinary nodes, so they save, copy, undo and run like any other."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from .base import BaseInvocation, BaseInvocationOutput, InputField, OutputField
from .context import InvocationContext


class RerouteOutput(BaseInvocationOutput):
    value: Any = OutputField(description="The value that came in, unchanged")


class RerouteInvocation(BaseInvocation):
    """A dot that passes any value through: tidy long links or fan one output out from elsewhere."""

    type: Literal["reroute"] = "reroute"
    category: ClassVar[str] = "canvas"
    tags: ClassVar[tuple[str, ...]] = ("dot", "pass", "wire")
    value: Any = InputField(description="Any value (its type flows through to the output)")

    @classmethod
    def infer_output_tags(cls, input_tags: dict[str, str]) -> dict[str, str]:
        tag = input_tags.get("value")
        return {"value": tag} if tag and tag != "any" else {}

    def invoke(self, context: InvocationContext) -> RerouteOutput:
        return RerouteOutput(value=self.value)


class NoteOutput(BaseInvocationOutput):
    pass


class NoteInvocation(BaseInvocation):
    """Free text on the canvas: explain a graph, leave a reminder.  Runs instantly, produces nothing."""

    type: Literal["note"] = "note"
    category: ClassVar[str] = "canvas"
    tags: ClassVar[tuple[str, ...]] = ("comment", "text", "label")
    text: str = InputField("", kind="prompt", description="The note's text")

    def invoke(self, context: InvocationContext) -> NoteOutput:
        return NoteOutput()
