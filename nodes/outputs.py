"""Output models shared by many nodes."""
from __future__ import annotations

from typing import Any

from .base import BaseInvocationOutput, ImageField, OutputField


class ImageOutput(BaseInvocationOutput):
    image: ImageField = OutputField(description="The image")
    width: int = OutputField(description="Width in pixels")
    height: int = OutputField(description="Height in pixels")

    @classmethod
    def of(cls, image: ImageField, pil_image: Any) -> "ImageOutput":
        return cls(image=image, width=pil_image.width, height=pil_image.height)


class IntOutput(BaseInvocationOutput):
    value: int = OutputField(description="The integer")


class FloatOutput(BaseInvocationOutput):
    value: float = OutputField(description="The number")


class BoolOutput(BaseInvocationOutput):
    value: bool = OutputField(description="The boolean")


class StringOutput(BaseInvocationOutput):
    value: str = OutputField(description="The text")


class SeedOutput(BaseInvocationOutput):
    seed: int = OutputField(description="The seed")
