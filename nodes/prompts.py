"""Prompts -> conditioning (weighting syntax, long prompts, embeddings), and mixing conditionings.

Syntax (nodes/core/prompt_syntax.py): (word) x1.1, (word:1.3), [word] /1.1, \\( for a literal
bracket, embedding:name or <name> for a textual-inversion embedding from <models>/embeddings/.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from .base import (BaseInvocation, BaseInvocationOutput, ClipField, ConditioningField, ImageField, InputField, NodeInputError,
                   OutputField)
from .context import InvocationContext
from .latents import get_conditioning


class ConditioningOutput(BaseInvocationOutput):
    conditioning: ConditioningField = OutputField(description="The conditioning")


def check_syntax(field: str, text: str) -> None:
    """A malformed prompt fails before any model loads, naming the field and the character."""
    from .core.prompt_syntax import PromptSyntaxError, parse

    try:
        parse(text)
    except PromptSyntaxError as exc:
        raise NodeInputError(field, str(exc)) from None


def encode(context: InvocationContext, clip: ClipField, texts: dict[str, str], sdxl: bool | None) -> dict[str, Any]:
    """Conditioning of `texts` (field -> prompt; SDXL's second encoder may get its own text)."""
    from .core import pins
    from .core.conditioning import PromptEncoder
    from .core.prompt_syntax import PromptSyntaxError

    for field, text in texts.items():
        check_syntax(field, text)
    with pins.clip(context, clip) as (pipe, info), pins.embeddings(context) as lookup:
        if sdxl is not None and (info.base == "sdxl") != sdxl:
            raise NodeInputError("clip", f"'{info.id}' is an {info.base} model: use the "
                                         f"{'sdxl_prompt' if info.base == 'sdxl' else 'prompt'} node for it")
        encoder = PromptEncoder(pipe, info.base, skip=clip.skip, embeddings=lookup)
        try:
            return encoder.encode(texts["prompt"], texts.get("prompt_2"))
        except PromptSyntaxError as exc:
            raise NodeInputError(exc.field, str(exc)) from None


class PromptInvocation(BaseInvocation):
    """Encode a prompt for SD 1.x / 2.x (weights like (word:1.3), any length, embeddings)."""

    type: Literal["prompt"] = "prompt"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    clip: ClipField = InputField(description="Text encoder")
    prompt: str = InputField("", description="The prompt", kind="prompt")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        conditioning = encode(context, self.clip, {"prompt": self.prompt}, sdxl=False)
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(conditioning, "cond")))


class SDXLPromptInvocation(BaseInvocation):
    """Encode a prompt for SDXL with both text encoders (the second may get its own text)."""

    type: Literal["sdxl_prompt"] = "sdxl_prompt"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    clip: ClipField = InputField(description="SDXL text encoders")
    prompt: str = InputField("", description="The prompt", kind="prompt")
    prompt_2: str = InputField("", description="Text for the second encoder (empty: the same prompt)", kind="prompt")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        texts = {"prompt": self.prompt, **({"prompt_2": self.prompt_2} if self.prompt_2 else {})}
        conditioning = encode(context, self.clip, texts, sdxl=True)
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(conditioning, "cond")))


class ConditioningCombineInvocation(BaseInvocation):
    """Join two conditionings one after the other (both prompts apply, as one long prompt)."""

    type: Literal["conditioning_combine"] = "conditioning_combine"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    first: ConditioningField = InputField(description="First conditioning (its pooled output is kept, for SDXL)")
    second: ConditioningField = InputField(description="Second conditioning")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        from .core.conditioning import combine

        try:
            result = combine(get_conditioning(context, "first", self.first), get_conditioning(context, "second", self.second))
        except ValueError as exc:
            raise NodeInputError("second", str(exc)) from None
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(result, "cond")))


class ConditioningBlendInvocation(BaseInvocation):
    """Blend two conditionings: (1 - alpha) * first + alpha * second; ControlNets and T2I-Adapters
    applied to the first stay applied."""

    type: Literal["conditioning_blend"] = "conditioning_blend"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    first: ConditioningField = InputField(description="Conditioning at alpha 0")
    second: ConditioningField = InputField(description="Conditioning at alpha 1")
    alpha: float = InputField(0.5, ge=0, le=1, description="How much of the second")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        from .core.conditioning import blend

        try:
            result = blend(context.objects.get(self.first.conditioning_name),
                           context.objects.get(self.second.conditioning_name), self.alpha)
        except ValueError as exc:
            raise NodeInputError("second", str(exc)) from None
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(result, "cond")))


class ConditioningSetMaskInvocation(BaseInvocation):
    """Restrict a conditioning to where a mask is white (grey: partly), with a strength; combine regions
    with conditioning_regions (ComfyUI's ConditioningSetMask)."""

    type: Literal["conditioning_set_mask"] = "conditioning_set_mask"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    conditioning: ConditioningField = InputField(description="Conditioning to restrict")
    mask: ImageField = InputField(description="Where it applies: white fully, black not at all (stretched to the image)")
    strength: float = InputField(1.0, ge=0, le=10, description="Its weight against the other regions where they overlap")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        import numpy as np
        import torch

        from .core.regions import with_each

        pixels = np.asarray(context.images.get(self.mask).convert("L"), dtype=np.float32) / 255.0
        result = with_each(get_conditioning(context, "conditioning", self.conditioning), mask=torch.from_numpy(pixels),
                           strength=self.strength)
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(result, "cond")))


class ConditioningSetAreaInvocation(BaseInvocation):
    """Restrict a conditioning to a box (in pixels, whole 8-pixel cells): the model draws that prompt as
    an image of the box's size there (ComfyUI's ConditioningSetArea)."""

    type: Literal["conditioning_set_area"] = "conditioning_set_area"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    conditioning: ConditioningField = InputField(description="Conditioning to restrict")
    x: int = InputField(0, ge=0, le=8192, multiple_of=8, description="Left edge in pixels")
    y: int = InputField(0, ge=0, le=8192, multiple_of=8, description="Top edge in pixels")
    width: int = InputField(512, ge=8, le=8192, multiple_of=8, description="Width in pixels")
    height: int = InputField(512, ge=8, le=8192, multiple_of=8, description="Height in pixels")
    strength: float = InputField(1.0, ge=0, le=10, description="Its weight against the other regions where they overlap")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        from .core.regions import with_each

        result = with_each(get_conditioning(context, "conditioning", self.conditioning),
                           area=(self.x, self.y, self.width, self.height), strength=self.strength)
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(result, "cond")))


class ConditioningRegionsInvocation(BaseInvocation):
    """Use two conditionings side by side: each is evaluated every step and the results are averaged by
    their masks and areas (ComfyUI's ConditioningCombine; conditioning_combine joins prompts instead)."""

    type: Literal["conditioning_regions"] = "conditioning_regions"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    first: ConditioningField = InputField(description="First conditioning (or regions)")
    second: ConditioningField = InputField(description="Second conditioning (or regions)")

    def invoke(self, context: InvocationContext) -> ConditioningOutput:
        from .core.regions import combined

        try:
            result = combined([get_conditioning(context, "first", self.first), get_conditioning(context, "second", self.second)])
        except ValueError as exc:
            raise NodeInputError("second", str(exc)) from None
        return ConditioningOutput(conditioning=ConditioningField(conditioning_name=context.objects.put(result, "cond")))

