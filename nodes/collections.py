"""Lists: ranges, iterate (fan-out over a list) and collect (fan-in into a list)."""
from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

from .base import BaseInvocation, BaseInvocationOutput, InputField, NodeInputError, OutputField, SeedField, list_item_tag
from .context import InvocationContext


class IntListOutput(BaseInvocationOutput):
    collection: list[int] = OutputField(description="The integers")


class RangeInvocation(BaseInvocation):
    """Integers from start (inclusive) to stop (exclusive) by step."""

    type: Literal["range"] = "range"
    category: ClassVar[str] = "collections"
    start: int = InputField(0, description="First value")
    stop: int = InputField(10, description="Stop before this value")
    step: int = InputField(1, description="Step (not 0)")

    def invoke(self, context: InvocationContext) -> IntListOutput:
        if self.step == 0:
            raise NodeInputError("step", "must not be 0")
        return IntListOutput(collection=list(range(self.start, self.stop, self.step)))


class RandomRangeInvocation(BaseInvocation):
    """`size` random integers (e.g. seeds) from a seeded generator."""

    type: Literal["random_range"] = "random_range"
    category: ClassVar[str] = "collections"
    low: int = InputField(0, description="Smallest value")
    high: int = InputField(2**32 - 1, description="Largest value")
    size: int = InputField(4, ge=0, le=100_000, description="How many")
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> IntListOutput:
        rng = random.Random(self.seed)
        low, high = sorted((self.low, self.high))
        return IntListOutput(collection=[rng.randint(low, high) for _ in range(self.size)])


class IterateOutput(BaseInvocationOutput):
    item: Any = OutputField(description="The current item")
    index: int = OutputField(description="Its position in the list")
    total: int = OutputField(description="How many items the list has")


class IterateInvocation(BaseInvocation):
    """Fan out: everything downstream runs once per item of the list."""

    type: Literal["iterate"] = "iterate"
    category: ClassVar[str] = "collections"
    fans_out: ClassVar[bool] = True
    collection: list[Any] = InputField(description="The list to iterate over")

    @classmethod
    def infer_output_tags(cls, input_tags: dict[str, str]) -> dict[str, str]:
        item = list_item_tag(input_tags.get("collection", ""))
        return {"item": item} if item else {}

    def invoke(self, context: InvocationContext) -> list[IterateOutput]:
        total = len(self.collection)
        return [IterateOutput(item=item, index=i, total=total) for i, item in enumerate(self.collection)]


class CollectOutput(BaseInvocationOutput):
    collection: list[Any] = OutputField(description="Every item that reached the input, in order")


class CollectInvocation(BaseInvocation):
    """Fan in: gather every value linked into `item` (one per upstream iteration) into a list."""

    type: Literal["collect"] = "collect"
    category: ClassVar[str] = "collections"
    item: list[Any] = InputField(default_factory=list, description="Link values to gather here", collect=True)

    @classmethod
    def infer_output_tags(cls, input_tags: dict[str, str]) -> dict[str, str]:
        item = input_tags.get("item")
        return {"collection": f"list[{item}]"} if item and item != "any" else {}

    def invoke(self, context: InvocationContext) -> CollectOutput:
        return CollectOutput(collection=list(self.item))
