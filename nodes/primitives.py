"""Primitive values, seeds, random numbers, math and text."""
from __future__ import annotations

import math
import operator
import random
from typing import ClassVar, Literal

from .base import BaseInvocation, InputField, NodeInputError, SeedField
from .context import InvocationContext
from .outputs import BoolOutput, FloatOutput, IntOutput, SeedOutput, StringOutput


class IntegerInvocation(BaseInvocation):
    """An integer value."""

    type: Literal["integer"] = "integer"
    category: ClassVar[str] = "primitives"
    value: int = InputField(0, description="The integer")

    def invoke(self, context: InvocationContext) -> IntOutput:
        return IntOutput(value=self.value)


class FloatInvocation(BaseInvocation):
    """A floating-point value."""

    type: Literal["float"] = "float"
    category: ClassVar[str] = "primitives"
    value: float = InputField(0.0, description="The number")

    def invoke(self, context: InvocationContext) -> FloatOutput:
        return FloatOutput(value=self.value)


class StringInvocation(BaseInvocation):
    """A text value."""

    type: Literal["string"] = "string"
    category: ClassVar[str] = "primitives"
    value: str = InputField("", description="The text", kind="prompt")

    def invoke(self, context: InvocationContext) -> StringOutput:
        return StringOutput(value=self.value)


class BooleanInvocation(BaseInvocation):
    """A true/false value."""

    type: Literal["boolean"] = "boolean"
    category: ClassVar[str] = "primitives"
    value: bool = InputField(False, description="The boolean")

    def invoke(self, context: InvocationContext) -> BoolOutput:
        return BoolOutput(value=self.value)


class SeedInvocation(BaseInvocation):
    """A seed: leave it at -1 and a random one is fixed when the node is added."""

    type: Literal["seed"] = "seed"
    category: ClassVar[str] = "primitives"
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> SeedOutput:
        return SeedOutput(seed=self.seed)


class RandomIntInvocation(BaseInvocation):
    """A random integer in [low, high], reproducible from its seed."""

    type: Literal["random_int"] = "random_int"
    category: ClassVar[str] = "primitives"
    low: int = InputField(0, description="Smallest value")
    high: int = InputField(2**31 - 1, description="Largest value")
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> IntOutput:
        low, high = sorted((self.low, self.high))
        return IntOutput(value=random.Random(self.seed).randint(low, high))


MathOperation = Literal["add", "sub", "mul", "div", "pow", "min", "max", "mod"]


_OPERATIONS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
               "pow": operator.pow, "min": min, "max": max, "mod": operator.mod}


def _apply(operation: str, a: float, b: float) -> float:
    if operation in ("div", "mod") and b == 0:
        raise NodeInputError("b", "division by zero")
    return _OPERATIONS[operation](a, b)


class MathInvocation(BaseInvocation):
    """Integer math: add, sub, mul, div (floor), pow, min, max, mod."""

    type: Literal["math"] = "math"
    category: ClassVar[str] = "math"
    operation: MathOperation = InputField("add", description="The operation")
    a: int = InputField(0, description="First operand")
    b: int = InputField(0, description="Second operand")

    def invoke(self, context: InvocationContext) -> IntOutput:
        value = _apply(self.operation, self.a, self.b)
        return IntOutput(value=math.floor(value) if self.operation == "div" else int(value))


class FloatMathInvocation(BaseInvocation):
    """Floating-point math: add, sub, mul, div, pow, min, max, mod."""

    type: Literal["float_math"] = "float_math"
    category: ClassVar[str] = "math"
    operation: MathOperation = InputField("add", description="The operation")
    a: float = InputField(0.0, description="First operand")
    b: float = InputField(0.0, description="Second operand")

    def invoke(self, context: InvocationContext) -> FloatOutput:
        return FloatOutput(value=_apply(self.operation, self.a, self.b))


class StringJoinInvocation(BaseInvocation):
    """Join two pieces of prompt text with a separator."""

    type: Literal["string_join"] = "string_join"
    category: ClassVar[str] = "text"
    first: str = InputField("", description="Text before", kind="prompt")
    second: str = InputField("", description="Text after", kind="prompt")
    separator: str = InputField(", ", description="Put between them (skipped when either is empty)")

    def invoke(self, context: InvocationContext) -> StringOutput:
        parts = [p for p in (self.first, self.second) if p]
        return StringOutput(value=self.separator.join(parts))
