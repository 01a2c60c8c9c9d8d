"""Guidance by images: ControlNet, T2I-Adapter, IP-Adapter.

ControlNets and T2I-Adapters are attached to conditioning (ComfyUI's ControlNetApplyAdvanced):
the apply nodes take and return a positive and a negative, several stack, and denoise_latents
evaluates each within its start/end percent of the schedule.  The IP-Adapter is a patch of the
UNet (extra key/value projections in its cross-attention layers), so it rides on the UNet pin like
a LoRA; it needs no prompt and applies to both guidance rows (the negative with an empty image).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from .base import (BaseInvocation, BaseInvocationOutput, ConditioningField, ControlNetField, ImageField, InputField,
                   IPAdapterRef, NodeInputError, OutputField, T2IAdapterField, UNetField)
from .context import InvocationContext
from .latents import get_conditioning
from .models import _check


class ControlNetOutput(BaseInvocationOutput):
    control_model: ControlNetField = OutputField(description="The ControlNet")


class T2IAdapterOutput(BaseInvocationOutput):
    t2i_adapter: T2IAdapterField = OutputField(description="The T2I-Adapter")


class ControlledConditioningOutput(BaseInvocationOutput):
    positive: ConditioningField = OutputField(description="Positive conditioning with the control")
    negative: ConditioningField = OutputField(description="Negative conditioning with the control")


class IPAdapterOutput(BaseInvocationOutput):
    unet: UNetField = OutputField(description="The denoiser, with the IP-Adapter")


class ControlNetLoaderInvocation(BaseInvocation):
    """A ControlNet (diffusers folder or single file, SD 1.x / SDXL)."""

    type: Literal["controlnet_loader"] = "controlnet_loader"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True  # model lists live where models load
    model: str = InputField(description="ControlNet", kind="model", model_kind="controlnet")

    def invoke(self, context: InvocationContext) -> ControlNetOutput:
        return ControlNetOutput(control_model=ControlNetField(model_id=_check(context, "model", self.model, "controlnet")))


class T2IAdapterLoaderInvocation(BaseInvocation):
    """A T2I-Adapter (diffusers folder or single file)."""

    type: Literal["t2i_adapter_loader"] = "t2i_adapter_loader"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True
    model: str = InputField(description="T2I-Adapter", kind="model", model_kind="t2i_adapter")

    def invoke(self, context: InvocationContext) -> T2IAdapterOutput:
        return T2IAdapterOutput(t2i_adapter=T2IAdapterField(model_id=_check(context, "model", self.model, "t2i_adapter")))


def _check_range(start: float, end: float) -> None:
    if end < start:
        raise NodeInputError("end_percent", f"ends at {end}, before it starts ({start})")


def _apply(context: InvocationContext, positive: ConditioningField, negative: ConditioningField, kind: str, model_id: str,
           image: ImageField, strength: float, start: float, end: float) -> ControlledConditioningOutput:
    from .core.controls import attach, make_control

    _check_range(start, end)
    control = make_control(kind, model_id, context.images.get(image), strength, start, end)
    refs = {}
    for field, ref in (("positive", positive), ("negative", negative)):
        conditioning = attach(get_conditioning(context, field, ref), control)
        refs[field] = ConditioningField(conditioning_name=context.objects.put(conditioning, "cond"))
    return ControlledConditioningOutput(**refs)


class ControlNetApplyInvocation(BaseInvocation):
    """Steer generation with a ControlNet and a control image (edges, depth, pose...); several stack."""

    type: Literal["controlnet_apply"] = "controlnet_apply"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True  # where conditioning is held
    positive: ConditioningField = InputField(description="Positive conditioning")
    negative: ConditioningField = InputField(description="Negative conditioning")
    control_model: ControlNetField = InputField(description="ControlNet")
    image: ImageField = InputField(description="Control image (stretched to the generation size)")
    strength: float = InputField(1.0, ge=0, le=10, description="How strongly it steers (0: off)")
    start_percent: float = InputField(0.0, ge=0, le=1, description="Part of the schedule before it starts")
    end_percent: float = InputField(1.0, ge=0, le=1, description="Part of the schedule where it stops")

    def invoke(self, context: InvocationContext) -> ControlledConditioningOutput:
        model_id = _check(context, "control_model", self.control_model.model_id, "controlnet")
        return _apply(context, self.positive, self.negative, "controlnet", model_id, self.image, self.strength,
                      self.start_percent, self.end_percent)


class T2IAdapterApplyInvocation(BaseInvocation):
    """Steer generation with a T2I-Adapter and a control image; several stack (with ControlNets too)."""

    type: Literal["t2i_adapter_apply"] = "t2i_adapter_apply"
    category: ClassVar[str] = "conditioning"
    runs_in_worker: ClassVar[bool] = True
    positive: ConditioningField = InputField(description="Positive conditioning")
    negative: ConditioningField = InputField(description="Negative conditioning")
    t2i_adapter: T2IAdapterField = InputField(description="T2I-Adapter")
    image: ImageField = InputField(description="Control image (stretched to the generation size)")
    strength: float = InputField(1.0, ge=0, le=10, description="How strongly it steers (0: off)")
    start_percent: float = InputField(0.0, ge=0, le=1, description="Part of the schedule before it starts")
    end_percent: float = InputField(1.0, ge=0, le=1, description="Part of the schedule where it stops")

    def invoke(self, context: InvocationContext) -> ControlledConditioningOutput:
        model_id = _check(context, "t2i_adapter", self.t2i_adapter.model_id, "t2i_adapter")
        return _apply(context, self.positive, self.negative, "t2i_adapter", model_id, self.image, self.strength,
                      self.start_percent, self.end_percent)


class IPAdapterInvocation(BaseInvocation):
    """An image prompt: an IP-Adapter and its CLIP vision encoder add an image to what the UNet follows."""

    type: Literal["ip_adapter"] = "ip_adapter"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True
    unet: UNetField = InputField(description="Denoiser to add it to")
    ip_adapter_model: str = InputField(description="IP-Adapter", kind="model", model_kind="ip_adapter")
    clip_vision_model: str = InputField(description="CLIP vision encoder it was trained with", kind="model",
                                        model_kind="clip_vision")
    image: ImageField = InputField(description="Image prompt")
    weight: float = InputField(1.0, ge=-1, le=2, description="How strongly the image counts (0: off)")
    start_percent: float = InputField(0.0, ge=0, le=1, description="Part of the schedule before it starts")
    end_percent: float = InputField(1.0, ge=0, le=1, description="Part of the schedule where it stops")

    def invoke(self, context: InvocationContext) -> IPAdapterOutput:
        _check_range(self.start_percent, self.end_percent)
        adapter = IPAdapterRef(model_id=_check(context, "ip_adapter_model", self.ip_adapter_model, "ip_adapter"),
                               clip_vision_id=_check(context, "clip_vision_model", self.clip_vision_model, "clip_vision"),
                               image=self.image, weight=self.weight, start=self.start_percent, end=self.end_percent)
        return IPAdapterOutput(unet=self.unet.model_copy(update={"ip_adapters": [*self.unet.ip_adapters, adapter]}))
