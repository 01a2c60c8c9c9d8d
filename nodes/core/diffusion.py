"""Running Stable Diffusion: txt2img, img2img and inpaint over a loaded diffusers pipeline.

The denoising loop is ours rather than the pipelines' __call__, so that every step reports
progress (with a cheap latent->RGB preview) and can be canceled, and so that the UNet call
plus classifier-free guidance is one module that torch.compile can turn into a CUDA graph.

Reproducible: the starting noise and every ancestral-sampler noise come from one CPU generator
seeded with the node's seed, so the same seed gives the same image on the same device.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

# node scheduler name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

# A fixed linear map from the 4 latent channels to RGB per latent space (fitted by the
# community on real images; ComfyUI and InvokeAI use the same numbers) for step previews.
_PREVIEW_FACTORS = {
    "sd": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
           [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011]),
}

StepCallback = Callable[[int, int, Image.Image], None]


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    steps: int = 30
    cfg_scale: float = 7.5
    scheduler: str = "euler"
    width: int = 512
    height: int = 512
    seed: int = 0
    batch_size: int = 1
    init_image: Image.Image | None = None  # img2img / inpaint source
    strength: float = 1.0  # how much of the source is replaced (1: all of it)
    mask: Image.Image | None = None  # inpaint: white is repainted, black is kept


class Denoiser(torch.nn.Module):
    """One UNet call for the whole classifier-free-guidance batch, and the guidance mix."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, guidance: torch.Tensor | None,
                extra_channels: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None,
                time_ids: torch.Tensor | None = None) -> torch.Tensor:
        if extra_channels is not None:  # inpainting UNets read mask and masked image beside the latents
            latents = torch.cat([latents, extra_channels], dim=1)
        if guidance is not None:
            latents = torch.cat([latents, latents])
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None
        noise = self.unet(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False)[0]
        if guidance is None:
            return noise
        uncond, cond = noise.chunk(2)
        return uncond + guidance * (cond - uncond)


def denoiser_for(unet: Any, compile_mode: str, cache_dir: Path | None = None) -> torch.nn.Module:
    """The Denoiser of a UNet, made once per UNet and mode: on CUDA in channels_last and,
    unless compile_mode is "off", compiled (compiled kernels are cached on disk across runs)."""
    made: dict[str, torch.nn.Module] = unet.__dict__.setdefault("_invoke_nodes_denoisers", {})
    if compile_mode not in made:
        module: torch.nn.Module = Denoiser(unet)
        if unet.device.type == "cuda":
            _tune_for_cuda(unet)
            if compile_mode != "off":
                if cache_dir is not None:
                    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "torchinductor"))
                import torch._inductor.config as inductor_config

                inductor_config.conv_1x1_as_mm = True  # SD's 1x1 convolutions run faster as matrix products
                module = torch.compile(module, mode=compile_mode, fullgraph=False, dynamic=False)
        made[compile_mode] = module
    return made[compile_mode]


def _tune_for_cuda(unet: Any) -> None:
    """Layout and kernel choices that speed the UNet up on a GPU without changing what it computes."""
    if unet.__dict__.get("_invoke_nodes_tuned"):
        return
    torch.backends.cudnn.benchmark = True  # the same convolution shapes run every step: pick kernels once
    unet.to(memory_format=torch.channels_last)  # what cuDNN's fast fp16 convolutions want
    if hasattr(unet, "fuse_qkv_projections"):
        unet.fuse_qkv_projections()  # one matrix product for q, k and v instead of three
    unet.__dict__["_invoke_nodes_tuned"] = True


def make_scheduler(pipe: Any, name: str) -> Any:
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    config = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    if class_name != "DPMSolverMultistepScheduler":
        config.pop("use_karras_sigmas", None)
    return getattr(diffusers, class_name).from_config({**config, **overrides})


def preview_image(latents: torch.Tensor, base: str) -> Image.Image:
    """A small RGB image of the first latent of the batch: one 4x3 matrix product, no VAE."""
    factors, bias = _PREVIEW_FACTORS["sdxl" if base == "sdxl" else "sd"]
    matrix = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float(), matrix) + torch.tensor(bias, device=latents.device)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


class Generator:
    """One generation over a loaded pipeline (and optional VAE override) on its device."""

    def __init__(self, pipe: Any, base: str, vae: Any = None, compile_mode: str = "off", cache_dir: Path | None = None) -> None:
        self.pipe = pipe
        self.base = base
        self.vae = vae if vae is not None else pipe.vae
        self.unet = pipe.unet
        self.device = self.unet.device
        self.dtype = self.unet.dtype
        self.denoiser = denoiser_for(self.unet, compile_mode, cache_dir)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.inpaint_unet = self.unet.config.in_channels == 9

    # --- pieces --------------------------------------------------------------------------

    def _encode_prompt(self, request: GenerationRequest, guided: bool) -> dict[str, torch.Tensor]:
        if self.base == "sdxl":
            pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
                prompt=request.prompt, device=self.device, num_images_per_prompt=request.batch_size,
                do_classifier_free_guidance=guided, negative_prompt=request.negative_prompt or None)
            size = [request.height, request.width, 0, 0, request.height, request.width]  # original, crop, target
            time_ids = torch.tensor([size], dtype=pos.dtype, device=self.device).repeat(request.batch_size, 1)
            if guided:
                return {"embeds": torch.cat([neg, pos]), "text_embeds": torch.cat([neg_pooled, pooled]),
                        "time_ids": torch.cat([time_ids, time_ids])}
            return {"embeds": pos, "text_embeds": pooled, "time_ids": time_ids}
        pos, neg = self.pipe.encode_prompt(request.prompt, self.device, request.batch_size, guided,
                                           negative_prompt=request.negative_prompt)
        return {"embeds": torch.cat([neg, pos]) if guided else pos}

    def _to_tensor(self, image: Image.Image, size: tuple[int, int], mode: str = "RGB") -> torch.Tensor:
        image = image.convert(mode).resize(size, Image.Resampling.LANCZOS if mode == "RGB" else Image.Resampling.NEAREST)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.reshape(image.height, image.width, -1)).permute(2, 0, 1)[None]
        return tensor.to(self.device)

    def _vae_dtype(self) -> torch.dtype:
        # SDXL's VAE overflows in float16 (its config says force_upcast)
        if self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            return torch.float32
        return self.dtype

    def encode_image(self, image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
        return self._encode_pixels(self._to_tensor(image, size))

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB pixels -> scaled latents (the distribution's mode: no sampling noise)."""
        vae_dtype = self._vae_dtype()
        vae = self.vae.to(vae_dtype)
        latents = vae.encode((pixels * 2 - 1).to(vae_dtype)).latent_dist.mode()
        self.vae.to(self.dtype)
        return (latents * self.vae.config.scaling_factor).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae_dtype = self._vae_dtype()
        vae = self.vae.to(vae_dtype)
        pixels = vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype), return_dict=False)[0]
        self.vae.to(self.dtype)
        array = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a, "RGB") for a in array]

    # --- the loop ------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        size = (request.width, request.height)
        latent_shape = (request.batch_size, 4, request.height // self.vae_scale, request.width // self.vae_scale)
        guided = request.cfg_scale > 1.0
        guidance = torch.tensor(request.cfg_scale, dtype=self.dtype, device=self.device) if guided else None
        conditioning = self._encode_prompt(request, guided)

        scheduler = make_scheduler(self.pipe, request.scheduler)
        scheduler.set_timesteps(request.steps, device=self.device)
        timesteps = scheduler.timesteps
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)

        source = None
        if request.init_image is not None:
            source = self.encode_image(request.init_image, size).repeat(request.batch_size, 1, 1, 1)
        if source is not None and request.strength < 1.0:
            keep = int(request.steps * request.strength)
            start = (request.steps - keep) * scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            if len(timesteps) == 0:
                raise ValueError(f"strength {request.strength} with {request.steps} steps leaves no step to run")
            latents = scheduler.add_noise(source, noise, timesteps[:1].repeat(request.batch_size))
        else:
            latents = noise * scheduler.init_noise_sigma

        keep_mask = extra_channels = None
        if request.mask is not None and source is not None:
            latent_size = (latent_shape[3], latent_shape[2])
            repaint = (self._to_tensor(request.mask, latent_size, "L") > 0.5).to(self.dtype)
            if self.inpaint_unet:
                pixel_mask = (self._to_tensor(request.mask, size, "L") > 0.5).float()
                pixels = self._to_tensor(request.init_image, size)
                masked = self._encode_pixels(pixels * (1 - pixel_mask) + 0.5 * pixel_mask)  # grey where repainted
                extra_channels = torch.cat([repaint, masked], dim=1).repeat(request.batch_size, 1, 1, 1)
            else:
                keep_mask = 1 - repaint

        # ancestral samplers draw noise every step: from the seeded generator, for reproducibility
        step_noise = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        total = len(timesteps)
        for index, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            noise_pred = self.denoiser(model_input, t, conditioning["embeds"], guidance, extra_channels,
                                       conditioning.get("text_embeds"), conditioning.get("time_ids"))
            step = scheduler.step(noise_pred, t, latents, return_dict=True, **step_noise)
            latents = step.prev_sample.to(self.dtype)
            if keep_mask is not None:  # a plain UNet inpaints by re-imposing the (re-noised) source outside the mask
                known = source if index + 1 == total else scheduler.add_noise(source, noise, timesteps[index + 1:index + 2])
                latents = keep_mask * known + (1 - keep_mask) * latents
            estimate = getattr(step, "pred_original_sample", None)
            on_step(index + 1, total, preview_image(estimate if estimate is not None else latents, self.base))
        return self.decode(latents)
