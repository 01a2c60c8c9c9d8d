"""Model pins: a main model split into its UNet, CLIP and VAE, a separate VAE, LoRA stacks, CLIP skip.

These nodes only describe what to load (a pin is a model id plus its LoRA stack); the nodes that
compute (prompt, denoise_latents, vae_decode...) load the model and apply the LoRAs while they run.
So they need no torch, and two branches with different LoRAs are two different pins (the output
cache keys on them) over one cached base model.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from .base import (BaseInvocation, BaseInvocationOutput, ClipField, InputField, LoRARef, NodeInputError, OutputField,
                   UNetField, VAEField)
from .context import InvocationContext


class ModelLoaderOutput(BaseInvocationOutput):
    unet: UNetField = OutputField(description="The denoiser")
    clip: ClipField = OutputField(description="The text encoder(s)")
    vae: VAEField = OutputField(description="The VAE")


class UNetClipOutput(BaseInvocationOutput):
    unet: UNetField = OutputField(description="The denoiser, with the LoRA")
    clip: ClipField = OutputField(description="The text encoder(s), with the LoRA")


class ClipOutput(BaseInvocationOutput):
    clip: ClipField = OutputField(description="The text encoder(s)")


class VAEOutput(BaseInvocationOutput):
    vae: VAEField = OutputField(description="The VAE")


def _check(context: InvocationContext, field: str, model_id: str, kind: str) -> str:
    if not model_id:
        raise NodeInputError(field, f"choose a {kind} model")
    try:
        return context.models.get(model_id, kind=kind).id
    except KeyError as exc:
        raise NodeInputError(field, str(exc.args[0]) if exc.args else str(exc)) from None


class MainModelLoaderInvocation(BaseInvocation):
    """A main model (SD 1.x, SD 2.x, SDXL) as UNet, CLIP and VAE pins."""

    type: Literal["main_model_loader"] = "main_model_loader"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True  # model lists live where models load (scanning a .ckpt imports torch)
    model: str = InputField(description="Main model", kind="model", model_kind="main")

    def invoke(self, context: InvocationContext) -> ModelLoaderOutput:
        model_id = _check(context, "model", self.model, "main")
        return ModelLoaderOutput(unet=UNetField(model_id=model_id), clip=ClipField(model_id=model_id),
                                 vae=VAEField(model_id=model_id))


class VAELoaderInvocation(BaseInvocation):
    """A separate VAE (to use instead of a main model's own)."""

    type: Literal["vae_loader"] = "vae_loader"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True
    vae_model: str = InputField(description="VAE", kind="model", model_kind="vae")

    def invoke(self, context: InvocationContext) -> VAEOutput:
        return VAEOutput(vae=VAEField(model_id=_check(context, "vae_model", self.vae_model, "vae")))


class LoRALoaderInvocation(BaseInvocation):
    """Add a LoRA to a UNet and a CLIP; chain several for a stack."""

    type: Literal["lora_loader"] = "lora_loader"
    category: ClassVar[str] = "model"
    runs_in_worker: ClassVar[bool] = True
    lora: str = InputField(description="LoRA (kohya or diffusers/PEFT file in your models folder)", kind="model",
                           model_kind="lora")
    unet: UNetField = InputField(description="Denoiser to add it to")
    clip: ClipField = InputField(description="Text encoder(s) to add it to")
    unet_weight: float = InputField(1.0, ge=-10, le=10, description="Strength on the denoiser (0: off)")
    clip_weight: float = InputField(1.0, ge=-10, le=10, description="Strength on the text encoder(s) (0: off)")

    def invoke(self, context: InvocationContext) -> UNetClipOutput:
        lora_id = _check(context, "lora", self.lora, "lora")
        unet = self.unet.model_copy(update={"loras": [*self.unet.loras, LoRARef(model_id=lora_id, weight=self.unet_weight)]})
        clip = self.clip.model_copy(update={"loras": [*self.clip.loras, LoRARef(model_id=lora_id, weight=self.clip_weight)]})
        return UNetClipOutput(unet=unet, clip=clip)


class ClipSkipInvocation(BaseInvocation):
    """Use an earlier layer of the text encoder (1: the penultimate, A1111's "Clip skip 2")."""

    type: Literal["clip_skip"] = "clip_skip"
    category: ClassVar[str] = "model"
    clip: ClipField = InputField(description="Text encoder(s)")
    skip: int = InputField(1, ge=0, le=10, description="Final layers to skip")

    def invoke(self, context: InvocationContext) -> ClipOutput:
        return ClipOutput(clip=self.clip.model_copy(update={"skip": self.skip}))
