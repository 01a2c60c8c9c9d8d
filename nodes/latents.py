"""Latents: empty latents, noise, the denoising pass, VAE encode/decode, latent upscale.

One `denoise_latents` node is txt2img (from an empty latent), img2img (denoise_start > 0 from
encoded latents), a hires-fix second pass and a refiner pass (denoise_end < 1, then add_noise off).
Latents live in the object store of the process that runs these nodes (the AI worker's).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from .base import (BaseInvocation, BaseInvocationOutput, ConditioningField, ImageField, InputField, LatentsField,
                   NodeInputError, OutputField, SeedField, UNetField, VAEField)
from .context import InvocationContext
from .outputs import ImageOutput

# Must match nodes.core.diffusion.SAMPLERS and SCHEDULES (a test checks it).
SeamlessAxes = Literal["none", "x", "y", "both"]  # nodes.core.seamless.SEAMLESS_AXES
SamplerName = Literal["euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "lms", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m",
                      "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim", "ddpm", "pndm", "unipc", "lcm"]
ScheduleName = Literal["normal", "karras", "exponential", "sgm_uniform"]
LATENT_CELL = 8  # pixels per latent cell
LATENT_CHANNELS = 4


class LatentsOutput(BaseInvocationOutput):
    latents: LatentsField = OutputField(description="The latents")
    width: int = OutputField(description="Width in pixels")
    height: int = OutputField(description="Height in pixels")

    @classmethod
    def of(cls, context: InvocationContext, latents: Any) -> "LatentsOutput":
        return cls(latents=LatentsField(latents_name=context.objects.put(latents, "latents")),
                   width=latents.shape[3] * LATENT_CELL, height=latents.shape[2] * LATENT_CELL)


def get_latents(context: InvocationContext, field: str, ref: LatentsField) -> Any:
    try:
        return context.objects.get(ref.latents_name)
    except KeyError as exc:
        raise NodeInputError(field, str(exc)) from None


def get_conditioning(context: InvocationContext, field: str, ref: ConditioningField) -> Any:
    try:
        return context.objects.get(ref.conditioning_name)
    except KeyError as exc:
        raise NodeInputError(field, str(exc)) from None


class EmptyLatentInvocation(BaseInvocation):
    """Zero latents of an image size: the start of txt2img."""

    type: Literal["empty_latent"] = "empty_latent"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    width: int = InputField(512, ge=64, le=8192, multiple_of=LATENT_CELL, description="Width in pixels")
    height: int = InputField(512, ge=64, le=8192, multiple_of=LATENT_CELL, description="Height in pixels")
    batch_size: int = InputField(1, ge=1, le=64, description="Images at once")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        import torch

        shape = (self.batch_size, LATENT_CHANNELS, self.height // LATENT_CELL, self.width // LATENT_CELL)
        return LatentsOutput.of(context, torch.zeros(shape))


class NoiseInvocation(BaseInvocation):
    """Seeded Gaussian noise of an image size (the same seed gives the same noise on every device)."""

    type: Literal["noise"] = "noise"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    seed: int = SeedField()
    width: int = InputField(512, ge=64, le=8192, multiple_of=LATENT_CELL, description="Width in pixels")
    height: int = InputField(512, ge=64, le=8192, multiple_of=LATENT_CELL, description="Height in pixels")
    batch_size: int = InputField(1, ge=1, le=64, description="Images at once")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        from .core.diffusion import make_noise

        shape = (self.batch_size, LATENT_CHANNELS, self.height // LATENT_CELL, self.width // LATENT_CELL)
        return LatentsOutput.of(context, make_noise(self.seed, shape))


class DenoiseLatentsInvocation(BaseInvocation):
    """Denoise latents with a UNet and prompts: txt2img, img2img, hires-fix and refiner passes."""

    type: Literal["denoise_latents"] = "denoise_latents"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    unet: UNetField = InputField(description="Denoiser (with its LoRAs)")
    positive: ConditioningField = InputField(description="What to draw")
    negative: ConditioningField = InputField(description="What to avoid")
    latents: LatentsField = InputField(description="Start latents (empty for txt2img; encoded or generated ones for img2img)")
    noise: LatentsField | None = InputField(None, description="Starting noise (empty: drawn from the seed)")
    mask: ImageField | None = InputField(None, description="Redraw only where this mask is white (else the latents' own mask)")
    steps: int = InputField(30, ge=1, le=500, description="Steps of the whole schedule")
    cfg_scale: float = InputField(7.5, ge=0, le=50, description="Prompt strength (classifier-free guidance; 1 or less: off)")
    sampler: SamplerName = InputField("euler", description="Sampler")
    schedule: ScheduleName = InputField("normal", description="Noise schedule (karras, exponential: samplers that have them)")
    denoise_start: float = InputField(0.0, ge=0, le=1, description="Part of the schedule already done (img2img: 1 - strength)")
    denoise_end: float = InputField(1.0, ge=0, le=1, description="Stop here (below 1: noise is left in, for a refiner)")
    add_noise: bool = InputField(True, description="Add noise first (off: the latents continue a pass that stopped early)")
    seamless: SeamlessAxes = InputField("none", description="Tile seamlessly along x, y or both (circular padding)")
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        from .core import pins
        from .core.diffusion import DenoiseRequest, denoise, step_range, supports_schedule
        from .core.regions import RegionsError

        if not supports_schedule(self.sampler, self.schedule):
            raise NodeInputError("schedule", f"sampler '{self.sampler}' has no '{self.schedule}' schedule")
        first, last = step_range(self.steps, self.denoise_start, self.denoise_end)
        if last <= first:
            raise NodeInputError("denoise_end", f"from {self.denoise_start} to {self.denoise_end} of {self.steps} steps "
                                                "runs no step: widen the range or raise the steps")
        latents = get_latents(context, "latents", self.latents)
        noise = get_latents(context, "noise", self.noise) if self.noise is not None else None
        if noise is not None and noise.shape != latents.shape:
            raise NodeInputError("noise", f"noise is {_size(noise)}, latents are {_size(latents)}")
        positive = get_conditioning(context, "positive", self.positive)
        negative = get_conditioning(context, "negative", self.negative)
        mask = self.mask or self.latents.noise_mask
        keep_mask = self._keep_mask(context, mask, latents) if mask is not None else None
        with pins.unet(context, self.unet) as (pipe, info):
            self._check_model(pipe, info, positive, negative)
            with pins.controls(context, positive, negative, info, pipe.unet) as controls, \
                    pins.ip_adapters(context, self.unet, pipe.unet) as ip_adapter:
                request = DenoiseRequest(positive=positive, negative=negative, latents=latents, seed=self.seed, noise=noise,
                                         steps=self.steps, cfg_scale=self.cfg_scale, sampler=self.sampler,
                                         schedule=self.schedule, start=self.denoise_start, end=self.denoise_end,
                                         add_noise=self.add_noise, keep_mask=keep_mask, seamless=self.seamless,
                                         controls=controls, ip_adapter=ip_adapter)
                try:
                    result = denoise(pipe.unet, info.base, pipe.scheduler.config, request,
                                     lambda step, total, preview: context.progress(step, total, "denoising", preview),
                                     context.models.compile_mode, context.models.cache_dir)
                except RegionsError as exc:
                    raise NodeInputError("negative" if exc.negative else "positive", str(exc)) from None
        return LatentsOutput.of(context, result)

    @staticmethod
    def _keep_mask(context: InvocationContext, ref: ImageField, latents: Any) -> Any:
        from .core.diffusion import image_to_tensor

        size = (latents.shape[3], latents.shape[2])
        return 1 - (image_to_tensor(context.images.get(ref), size, "L") > 0.5).float()

    @staticmethod
    def _check_model(pipe: Any, info: Any, positive: Any, negative: Any) -> None:
        if pipe.unet.config.in_channels != LATENT_CHANNELS:
            raise NodeInputError("unet", f"'{info.id}' is an inpainting model: use it in the inpaint node")
        from .core.regions import entries

        width = pipe.unet.config.cross_attention_dim
        for field, conditioning in (("positive", positive), ("negative", negative)):
            for entry in entries(conditioning):
                if entry["embeds"].shape[-1] != width:
                    raise NodeInputError(field, f"conditioning is {entry['embeds'].shape[-1]} wide, the UNet of "
                                                f"'{info.id}' takes {width}: encode the prompt with this model's clip")
                if info.base == "sdxl" and entry["pooled"] is None:
                    raise NodeInputError(field, "SDXL needs conditioning from the sdxl_prompt node")


def _size(latents: Any) -> str:
    return f"{latents.shape[0]}x{latents.shape[3] * LATENT_CELL}x{latents.shape[2] * LATENT_CELL}"


class VAEDecodeInvocation(BaseInvocation):
    """Latents to an image (tiled: in overlapping tiles, for large images in little memory)."""

    type: Literal["vae_decode"] = "vae_decode"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    vae: VAEField = InputField(description="VAE")
    latents: LatentsField = InputField(description="Latents to decode")
    tiled: bool = InputField(False, description="Decode in tiles (large images)")
    seamless: SeamlessAxes = InputField("none", description="Tile seamlessly along x, y or both (circular padding)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core import pins
        from .core.diffusion import decode_latents

        if self.tiled and self.seamless != "none":
            raise NodeInputError("seamless", "a tiled decode cannot wrap around the image's edges: turn tiled off")
        latents = get_latents(context, "latents", self.latents)
        with pins.vae(context, self.vae) as vae:
            images = decode_latents(vae, latents, tiled=self.tiled, seamless_axes=self.seamless,
                                    compile_mode=context.models.compile_mode, cache_dir=context.models.cache_dir)
        return ImageOutput.of(context.images.save(images[0]), images[0])


class VAEEncodeInvocation(BaseInvocation):
    """An image to latents (its size rounded down to whole latent cells)."""

    type: Literal["vae_encode"] = "vae_encode"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    vae: VAEField = InputField(description="VAE")
    image: ImageField = InputField(description="Image to encode")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        from .core import pins
        from .core.diffusion import encode_pixels, image_to_tensor

        image = context.images.get(self.image)
        size = tuple(max(LATENT_CELL, v - v % LATENT_CELL) for v in image.size)
        with pins.vae(context, self.vae) as vae:
            latents = encode_pixels(vae, image_to_tensor(image, size))  # type: ignore[arg-type]
        return LatentsOutput.of(context, latents)


class LatentUpscaleInvocation(BaseInvocation):
    """Resize latents by a factor, or to a size when width and height are set (hires fix)."""

    type: Literal["latent_upscale"] = "latent_upscale"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    latents: LatentsField = InputField(description="Latents to resize")
    scale: float = InputField(2.0, ge=0.125, le=8, description="Factor (when width and height are 0)")
    width: int = InputField(0, ge=0, le=8192, multiple_of=LATENT_CELL, description="Width in pixels (0: use the factor)")
    height: int = InputField(0, ge=0, le=8192, multiple_of=LATENT_CELL, description="Height in pixels (0: use the factor)")
    mode: Literal["nearest-exact", "bilinear", "bicubic", "area"] = InputField("bilinear", description="Interpolation")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        import torch.nn.functional as F

        latents = get_latents(context, "latents", self.latents)
        if bool(self.width) != bool(self.height):
            raise NodeInputError("height" if self.width else "width", "set both width and height, or neither (to use the factor)")
        if self.width:
            size = (self.height // LATENT_CELL, self.width // LATENT_CELL)
        else:
            size = (max(1, round(latents.shape[2] * self.scale)), max(1, round(latents.shape[3] * self.scale)))
        extra = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
        resized = F.interpolate(latents.float(), size=size, mode=self.mode, **extra).to(latents.dtype)
        return LatentsOutput.of(context, resized)


class LatentBlendInvocation(BaseInvocation):
    """Blend two latents of one size: (1 - alpha) * first + alpha * second."""

    type: Literal["latent_blend"] = "latent_blend"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    first: LatentsField = InputField(description="Latents at alpha 0")
    second: LatentsField = InputField(description="Latents at alpha 1")
    alpha: float = InputField(0.5, ge=0, le=1, description="How much of the second")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        import torch

        first, second = get_latents(context, "first", self.first), get_latents(context, "second", self.second)
        if first.shape != second.shape:
            raise NodeInputError("second", f"latents differ in size: {_size(first)} and {_size(second)}")
        return LatentsOutput.of(context, torch.lerp(first.float(), second.to(first.device).float(), self.alpha).to(first.dtype))


class LatentCropInvocation(BaseInvocation):
    """Cut a rectangle out of latents (in pixels, whole latent cells)."""

    type: Literal["latent_crop"] = "latent_crop"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True
    latents: LatentsField = InputField(description="Latents")
    x: int = InputField(0, ge=0, le=8192, multiple_of=LATENT_CELL, description="Left edge in pixels")
    y: int = InputField(0, ge=0, le=8192, multiple_of=LATENT_CELL, description="Top edge in pixels")
    width: int = InputField(512, ge=LATENT_CELL, le=8192, multiple_of=LATENT_CELL, description="Width in pixels")
    height: int = InputField(512, ge=LATENT_CELL, le=8192, multiple_of=LATENT_CELL, description="Height in pixels")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        latents = get_latents(context, "latents", self.latents)
        full_width, full_height = latents.shape[3] * LATENT_CELL, latents.shape[2] * LATENT_CELL
        if self.x + self.width > full_width:
            raise NodeInputError("width", f"x + width is {self.x + self.width}, the latents are {full_width} wide")
        if self.y + self.height > full_height:
            raise NodeInputError("height", f"y + height is {self.y + self.height}, the latents are {full_height} high")
        x, y, w, h = (v // LATENT_CELL for v in (self.x, self.y, self.width, self.height))
        return LatentsOutput.of(context, latents[:, :, y:y + h, x:x + w].clone())


class SetLatentNoiseMaskInvocation(BaseInvocation):
    """Attach a mask to latents: denoise_latents then redraws only where it is white."""

    type: Literal["set_latent_noise_mask"] = "set_latent_noise_mask"
    category: ClassVar[str] = "latents"
    runs_in_worker: ClassVar[bool] = True  # where the latents are held
    latents: LatentsField = InputField(description="Latents")
    mask: ImageField = InputField(description="Mask: white is redrawn, black is kept")

    def invoke(self, context: InvocationContext) -> LatentsOutput:
        latents = get_latents(context, "latents", self.latents)  # the same tensor: only the reference gains the mask
        return LatentsOutput(latents=self.latents.model_copy(update={"noise_mask": self.mask}),
                             width=latents.shape[3] * LATENT_CELL, height=latents.shape[2] * LATENT_CELL)
