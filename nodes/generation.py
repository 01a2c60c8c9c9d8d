"""Stable Diffusion nodes: txt2img, img2img and inpaint.

The work happens in nodes/core/diffusion.py (imported when a node runs, so that listing nodes
never imports torch); these classes declare the inputs and turn bad ones into clear errors.
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Literal

from .base import BaseInvocation, ImageField, InputField, NodeInputError, SeedField, with_article
from .context import InvocationContext
from .latents import LATENT_CELL, SamplerName
from .outputs import ImageOutput
from .prompts import check_syntax

# The samplers of denoise_latents, and the one name older graphs use for a sampler + schedule
# (nodes.core.diffusion.SAMPLER_ALIASES; a test checks they agree).
SchedulerName = Literal[SamplerName, "dpmpp_2m_karras"]
SIZE_STEP = LATENT_CELL


class DiffusionInvocation(BaseInvocation):
    """Inputs every Stable Diffusion node shares (abstract: it has no `type`)."""

    category: ClassVar[str] = "generation"
    runs_in_worker: ClassVar[bool] = True
    model: str = InputField(description="Main model: SD 1.x, SD 2.x or SDXL", kind="model", model_kind="main")
    vae: str | None = InputField(None, description="VAE to use instead of the model's own", kind="model", model_kind="vae")
    prompt: str = InputField("", description="What to draw", kind="prompt")
    negative_prompt: str = InputField("", description="What to avoid", kind="prompt")
    steps: int = InputField(30, ge=1, le=500, description="Denoising steps")
    cfg_scale: float = InputField(7.5, ge=0, le=50, description="Prompt strength (classifier-free guidance; 1 or less: off)")
    scheduler: SchedulerName = InputField("euler", description="Sampler")
    seed: int = SeedField()

    def _request(self, **extra: Any) -> Any:
        from .core.diffusion import GenerationRequest

        return GenerationRequest(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                                 cfg_scale=self.cfg_scale, scheduler=self.scheduler, seed=self.seed, **extra)

    def _model_info(self, context: InvocationContext, field: str, kind: str) -> Any:
        model_id = getattr(self, field)
        if not model_id:
            raise NodeInputError(field, f"choose {with_article(kind)} model")
        try:
            return context.models.get(model_id, kind=kind)
        except KeyError as exc:
            raise NodeInputError(field, str(exc)) from None

    def _generate(self, context: InvocationContext, request: Any, inpaint: bool = False) -> ImageOutput:
        from .core import pins
        from .core.diffusion import Generator
        from .core.prompt_syntax import PromptSyntaxError

        check_syntax("prompt", self.prompt)
        check_syntax("negative_prompt", self.negative_prompt)
        info = self._model_info(context, "model", "main")
        if info.variant == "refiner":
            raise NodeInputError("model", f"'{info.id}' is an SDXL refiner: use it for a second pass "
                                          "(main_model_loader -> denoise_latents with denoise_start)")
        if info.variant == "inpaint" and not inpaint:
            raise NodeInputError("model", f"'{info.id}' is an inpainting model: use it in the inpaint node")
        ids = [info.id] + ([self._model_info(context, "vae", "vae").id] if self.vae else [])
        models = context.models
        with contextlib.ExitStack() as stack:
            try:
                loaded = stack.enter_context(models.use(*ids))
            except ValueError as exc:  # the file is listed but cannot be loaded: the reason names it
                failed = getattr(exc, "model_id", info.id)
                raise NodeInputError("model" if failed == info.id else "vae", str(exc)) from None
            embeddings = stack.enter_context(pins.embeddings(context))
            generator = Generator(loaded[0], info.base, vae=loaded[1] if self.vae else None,
                                  compile_mode=models.compile_mode, cache_dir=models.cache_dir, embeddings=embeddings)
            try:
                images = generator.run(request, lambda step, total, preview: context.progress(step, total, "denoising", preview))
            except PromptSyntaxError as exc:
                raise NodeInputError(exc.field, str(exc)) from None
        return ImageOutput.of(context.images.save(images[0]), images[0])

    def _check_strength(self, strength: float) -> None:
        if int(self.steps * strength) < 1:
            raise NodeInputError("strength", f"strength {strength} of {self.steps} steps runs no step: raise strength or steps")

    def _source_size(self, image: Any) -> tuple[int, int]:
        """The source image's size rounded down to whole latent cells."""
        width, height = (max(SIZE_STEP, v - v % SIZE_STEP) for v in image.size)
        return width, height


class Txt2ImgInvocation(DiffusionInvocation):
    """Generate an image from a prompt with Stable Diffusion."""

    type: Literal["txt2img"] = "txt2img"
    width: int = InputField(512, ge=64, le=4096, multiple_of=SIZE_STEP, description="Width in pixels")
    height: int = InputField(512, ge=64, le=4096, multiple_of=SIZE_STEP, description="Height in pixels")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return self._generate(context, self._request(width=self.width, height=self.height))


class Img2ImgInvocation(DiffusionInvocation):
    """Redraw an image from a prompt; strength says how much of it changes."""

    type: Literal["img2img"] = "img2img"
    image: ImageField = InputField(description="Image to start from")
    strength: float = InputField(0.75, ge=0.0, le=1.0, description="How much to change (0: nothing, 1: everything)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        self._check_strength(self.strength)
        source = context.images.get(self.image)
        width, height = self._source_size(source)
        return self._generate(context, self._request(width=width, height=height, init_image=source, strength=self.strength))


class InpaintInvocation(DiffusionInvocation):
    """Redraw the masked part of an image (white in the mask is redrawn, black is kept)."""

    type: Literal["inpaint"] = "inpaint"
    image: ImageField = InputField(description="Image to paint into")
    mask: ImageField = InputField(description="Mask: white is redrawn, black is kept")
    strength: float = InputField(1.0, ge=0.0, le=1.0, description="How much the masked part changes")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        self._check_strength(self.strength)
        source = context.images.get(self.image)
        mask = context.images.get(self.mask)
        if mask.size != source.size:
            raise NodeInputError("mask", f"mask is {mask.width}x{mask.height}, image is {source.width}x{source.height}")
        width, height = self._source_size(source)
        return self._generate(context, self._request(width=width, height=height, init_image=source, mask=mask,
                                                     strength=self.strength), inpaint=True)
