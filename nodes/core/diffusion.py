"""Running Stable Diffusion: txt2img, img2img and inpaint over a loaded diffusers pipeline.

The denoising loop is ours rather than the pipelines' __call__, so that every step reports
progress (with a cheap latent->RGB preview) and can be canceled, and so that the UNet call
plus classifier-free guidance is one module that torch.compile can turn into a CUDA graph.

Reproducible: the starting noise and every ancestral-sampler noise come from one CPU generator
seeded with the node's seed, so the same seed gives the same image on the same device.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# sampler name (ComfyUI's) -> (diffusers scheduler class, config overrides).  diffusers has no
# ancestral singlestep DPM++ nor a Brownian-tree SDE sampler without torchsde: dpmpp_2s_a is its
# singlestep DPM++ 2S and dpmpp_sde its singlestep SDE-DPM++ (README: Samplers).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2s_a": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "dpmpp_3m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
# schedule -> the config option that selects it (None: the sampler's own spacing of timesteps)
SCHEDULES: dict[str, tuple[str, Any] | None] = {
    "normal": None,
    "karras": ("use_karras_sigmas", True),
    "exponential": ("use_exponential_sigmas", True),
    "sgm_uniform": ("timestep_spacing", "trailing"),
}
# names the txt2img/img2img/inpaint nodes accept beyond SAMPLERS (graphs saved before schedules existed)
SAMPLER_ALIASES = {"dpmpp_2m_karras": ("dpmpp_2m", "karras")}

# A fixed linear map from the 4 latent channels to RGB per latent space (fitted by the
# community on real images; ComfyUI and InvokeAI use the same numbers) for step previews.
_PREVIEW_FACTORS = {
    "sd": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
           [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011]),
}

# on_step(step, total, preview): preview() makes the step's preview image, only when someone shows it
# The UNet's extra arguments ControlNets and T2I-Adapters give (nodes/core/controls.py)
RESIDUAL_ARGUMENTS = ("down_block_additional_residuals", "mid_block_additional_residual",
                      "down_intrablock_additional_residuals")

StepCallback = Callable[[int, int, Callable[[], Image.Image]], None]


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
                time_ids: torch.Tensor | None = None, control: dict[str, Any] | None = None) -> torch.Tensor:
        """control: the UNet's extra arguments of ControlNets, T2I-Adapters and IP-Adapters
        (nodes/core/controls.py), None without them."""
        if extra_channels is not None:  # inpainting UNets read mask and masked image beside the latents
            latents = torch.cat([latents, extra_channels], dim=1)
        if guidance is not None:
            latents = torch.cat([latents, latents])
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None
        more: dict[str, Any] = {}
        if control is not None:
            # copies of the lists: the UNet pops the T2I-Adapter's residuals off theirs
            more = {k: list(v) if isinstance(v, list) else v for k, v in control.items() if k in RESIDUAL_ARGUMENTS}
            if "image_embeds" in control:
                added = {**(added or {}), "image_embeds": control["image_embeds"]}
        noise = self.unet(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False, **more)[0]
        if guidance is None:
            return noise
        uncond, cond = noise.chunk(2)
        return uncond + guidance * (cond - uncond)

    def pick(self, *inputs: Any) -> "Denoiser":
        """The module that runs a loop with these inputs: this one (a compiled twin may differ)."""
        return self


def denoiser_for(unet: Any, compile_mode: str, cache_dir: Path | None = None, seamless: str = "none") -> Any:
    """The Denoiser of a UNet, made once per UNet and mode: on CUDA in channels_last; unless
    compile_mode is "off", compiled in the background (nodes/core/compiled.py).  Its `pick(inputs)`
    is the module that runs a loop with those inputs.  A seamless run is eager: a compiled graph
    traced with circular padding must never serve a plain run (denoise() holds off builds meanwhile)."""
    if seamless != "none":
        compile_mode = "off"
    return compiled(unet, "_invoke_nodes_denoisers", Denoiser, compile_mode, cache_dir)


def compiled(model: Any, slot: str, wrap: Callable[[Any], Any], compile_mode: str, cache_dir: Path | None = None) -> Any:
    """wrap(model) (a module with `pick`), made once per model, slot and mode and kept on the model;
    on CUDA the model is tuned.  compile_mode "graphs": run as CUDA graphs, uncompiled; a torch.compile
    mode: compiled in the background, CUDA graphs meanwhile ("auto" is off on a CPU: the manager
    decides; asked for by name, it compiles there too)."""
    made: dict[str, Any] = model.__dict__.setdefault(slot, {})
    if compile_mode not in made:
        module = wrap(model)
        if model.device.type == "cuda":
            _tune_for_cuda(model)
        if compile_mode == "graphs":
            from .compiled import CudaGraphs

            module = CudaGraphs(module)
        elif compile_mode != "off":
            from .compiled import BackgroundCompiled

            module = BackgroundCompiled(module, compile_mode, cache_dir)
        made[compile_mode] = module
    return made[compile_mode]


def wait_for_compiled(unet: Any, timeout: float | None = None) -> bool:
    """Wait until the UNet's background compiles are done (benchmarks); False on timeout."""
    return all(d.wait(timeout) for d in unet.__dict__.get("_invoke_nodes_denoisers", {}).values() if hasattr(d, "wait"))


# cuDNN's own choice of convolution algorithm, not timing them all on each new shape: timing made
# SDXL's first 1024² call 3 s slower (6.6 vs 3.6 s; diffusers 3.2 s) and was not faster warm (H200;
# nor the compiled SD1.5 denoiser as a CUDA graph: 6.183 vs 6.185 ms at 512², 28.49 vs 28.48 at 1024²).
CUDNN_BENCHMARK = False


def _tune_for_cuda(unet: Any) -> None:
    """Layout and kernel choices that speed the UNet (or a ControlNet) up on a GPU without changing what it computes."""
    if unet.__dict__.get("_invoke_nodes_tuned"):
        return
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
    unet.to(memory_format=torch.channels_last)  # what cuDNN's fast fp16 convolutions want
    if hasattr(unet, "fuse_qkv_projections"):
        unet.fuse_qkv_projections()  # one matrix product for q, k and v instead of three
    unet.__dict__["_invoke_nodes_tuned"] = True


def supports_schedule(sampler: str, schedule: str) -> bool:
    import diffusers

    option = SCHEDULES[schedule]
    if option is None:
        return True
    parameters = inspect.signature(getattr(diffusers, SAMPLERS[sampler][0]).__init__).parameters
    return option[0] in parameters


def make_scheduler(config: Any, sampler: str, schedule: str = "normal") -> Any:
    """A fresh scheduler for the model's training config (a pipeline's scheduler.config)."""
    import diffusers

    sampler, schedule = SAMPLER_ALIASES.get(sampler, (sampler, schedule))
    class_name, overrides = SAMPLERS[sampler]
    if not supports_schedule(sampler, schedule):
        raise ValueError(f"sampler '{sampler}' has no '{schedule}' schedule")
    settings = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        settings.pop(key, None)  # the schedule decides, not what the model folder happens to say
    option = SCHEDULES[schedule]
    if option is not None:
        settings[option[0]] = option[1]
    return getattr(diffusers, class_name).from_config({**settings, **overrides})


def make_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Starting noise drawn on the CPU in float32: the same seed gives the same noise on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def preview_image(latents: torch.Tensor, base: str) -> Image.Image:
    """A small RGB image of the first latent of the batch: one 4x3 matrix product, no VAE."""
    factors, bias = _PREVIEW_FACTORS["sdxl" if base == "sdxl" else "sd"]
    matrix = torch.tensor(factors, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("chw,cr->hwr", latents[0].float(), matrix) + torch.tensor(bias, device=latents.device)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


@dataclass
class DenoiseRequest:
    positive: dict[str, Any]  # conditioning (nodes/core/conditioning.py)
    negative: dict[str, Any]
    latents: torch.Tensor  # [batch, 4, h, w]: the size and, when denoising starts later or under a mask, the source
    seed: int = 0  # noise (when `noise` is None) and every ancestral sampler's step noise
    noise: torch.Tensor | None = None
    steps: int = 30
    cfg_scale: float = 7.5
    sampler: str = "euler"
    schedule: str = "normal"
    start: float = 0.0  # fraction of the schedule already done (img2img strength is 1 - start)
    end: float = 1.0  # stop here, leaving the rest of the noise in (for a refiner pass)
    add_noise: bool = True  # False: the latents are already noisy (they continue a pass that stopped early)
    keep_mask: torch.Tensor | None = None  # latent-sized, 1 where the source latents are kept (plain-UNet inpaint)
    aesthetic_scores: tuple[float, float] = (6.0, 2.5)  # SDXL refiners: positive, negative (diffusers' defaults)
    extra_channels: torch.Tensor | None = None  # inpainting UNets: mask + masked-image latents
    seamless: str = "none"  # none | x | y | both: the UNet pads circularly along those axes (a tiling image)
    controls: list[tuple[dict[str, Any], tuple[bool, bool], Any]] = field(default_factory=list)  # (control, rows, model)
    ip_adapter: Any = None  # controls.IPAdapterRun: IP-Adapters installed on the UNet for this run


def step_range(steps: int, start: float, end: float) -> tuple[int, int]:
    """(first, last) step of `steps` that a pass from `start` to `end` runs."""
    first = steps - int(steps * (1 - start) + 1e-6)
    last = int(steps * end + 1e-6)
    return first, last


def denoise(unet: Any, base: str, scheduler_config: Any, request: DenoiseRequest, on_step: StepCallback,
            compile_mode: str = "off", cache_dir: Path | None = None) -> torch.Tensor:
    """The denoising loop: txt2img, img2img, inpaint, hires-fix and refiner passes are all this."""
    from .compiled import _BUILD_LOCK
    from .seamless import seamless

    # no background compile may trace the UNet while its convolutions pad circularly
    builds_held = _BUILD_LOCK if request.seamless != "none" else contextlib.nullcontext()
    with torch.inference_mode(), builds_held, seamless(unet, request.seamless):
        return _denoise(unet, base, scheduler_config, request, on_step, compile_mode, cache_dir)


def _denoise(unet: Any, base: str, scheduler_config: Any, r: DenoiseRequest, on_step: StepCallback,
             compile_mode: str, cache_dir: Path | None) -> torch.Tensor:
    device, dtype = unet.device, unet.dtype
    denoiser = denoiser_for(unet, compile_mode, cache_dir, r.seamless)
    source = r.latents.to(device, dtype)
    batch = source.shape[0]
    extra = r.extra_channels.to(device, dtype) if r.extra_channels is not None else None

    scheduler = make_scheduler(scheduler_config, r.sampler, r.schedule)
    scheduler.set_timesteps(r.steps, device=device)
    first, last = step_range(r.steps, r.start, r.end)
    if last <= first:
        raise ValueError(f"denoising from {r.start} to {r.end} of {r.steps} steps runs no step")
    order = scheduler.order
    timesteps = scheduler.timesteps[first * order:last * order]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first * order)
    noise = (r.noise if r.noise is not None else make_noise(r.seed, tuple(source.shape))).to(device, dtype)
    if noise.shape != source.shape:
        raise ValueError(f"noise is {tuple(noise.shape)}, latents are {tuple(source.shape)}")
    if not r.add_noise:
        latents = source
    elif first == 0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(source, noise, timesteps[:1].repeat(batch))

    keep_mask = r.keep_mask.to(device, dtype) if r.keep_mask is not None else None
    # ancestral samplers draw noise every step: from a generator seeded with the seed, for reproducibility
    step_noise = {"generator": torch.Generator("cpu").manual_seed(r.seed)} \
        if "generator" in inspect.signature(scheduler.step).parameters else {}
    total = len(timesteps)
    span = (first * order, total, len(scheduler.timesteps))  # where the pass lies in the whole schedule
    predict = _predictor(unet, base, denoiser, r, source, extra, span, compile_mode, cache_dir)
    for index, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = predict(index, model_input, t)
        step = scheduler.step(noise_pred, t, latents, return_dict=True, **step_noise)
        latents = step.prev_sample.to(dtype)
        if keep_mask is not None:  # a plain UNet inpaints by re-imposing the (re-noised) source outside the mask
            known = source if index + 1 == total else scheduler.add_noise(source, noise, timesteps[index + 1:index + 2])
            latents = keep_mask * known + (1 - keep_mask) * latents
        estimate = getattr(step, "pred_original_sample", None)
        shown = estimate if estimate is not None else latents
        on_step(index + 1, total, lambda shown=shown: preview_image(shown, base))
    return latents


def _predictor(unet: Any, base: str, denoiser: torch.nn.Module, r: DenoiseRequest, source: torch.Tensor,
               extra: torch.Tensor | None, span: tuple[int, int, int], compile_mode: str,
               cache_dir: Path | None) -> Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]:
    """predict(index, model_input, t) -> the guided noise prediction of step `index` of the pass: one
    UNet call for a plain positive/negative pair (steered by ControlNets, T2I- and IP-Adapters:
    nodes/core/controls.py), or the regions' calls and their weighted mix (nodes/core/regions.py)."""
    from .conditioning import guidance_pair
    from .controls import Steering
    from .regions import RegionalPredictor, RegionsError, needs_regions, plain

    device, dtype = unet.device, unet.dtype
    batch, size = source.shape[0], (source.shape[2], source.shape[3])
    guided = r.cfg_scale > 1.0
    guidance = torch.tensor(r.cfg_scale, dtype=dtype, device=device) if guided else None
    pooled_width = r.positive["pooled"].shape[-1] if base == "sdxl" else 0
    if needs_regions(r.positive, r.negative if guided else {}, size):
        def side_time_ids(negative: bool) -> torch.Tensor:
            rows = _time_ids(unet, source, pooled_width, True, batch, r.aesthetic_scores).to(device, dtype)
            return rows[:batch] if negative else rows[batch:]

        if r.controls or r.ip_adapter is not None:
            raise RegionsError("ControlNets, T2I- and IP-Adapters do not steer regional prompts yet: apply them to a "
                               "plain prompt, or leave the regions out", negative=False)
        regional = RegionalPredictor(denoiser, r.positive, r.negative if guided else None, guidance, size, batch, device,
                                     dtype, extra, side_time_ids if base == "sdxl" else None)
        return lambda _index, model_input, t: regional(model_input, t)
    positive_entry, negative_entry = plain(r.positive, size), plain(r.negative, size)
    positive, negative = guidance_pair(positive_entry, negative_entry) if guided else (positive_entry["embeds"], None)
    rows = [positive.to(device, dtype).expand(batch, -1, -1)]
    if guided:
        rows.insert(0, negative.to(device, dtype).expand(batch, -1, -1))
    embeds = torch.cat(rows)
    text_embeds = time_ids = None
    if base == "sdxl":
        sides = (negative_entry, positive_entry) if guided else (positive_entry,)
        text_embeds = torch.cat([c["pooled"].to(device, dtype).expand(batch, -1) for c in sides])
        time_ids = _time_ids(unet, source, text_embeds.shape[-1], guided, batch, r.aesthetic_scores).to(device, dtype)

    steering = Steering.of(r.controls, r.ip_adapter, guided, source, span, compile_mode, cache_dir) \
        if r.controls or r.ip_adapter is not None else None
    module = None

    def predict(index: int, model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal module
        inputs: tuple[Any, ...] = (model_input, t, embeds, guidance, extra, text_embeds, time_ids)
        if steering is not None:
            inputs += (steering.step(index, model_input, t, embeds, text_embeds, time_ids),)
        if module is None:  # one module for the whole image: the same seed, the same pixels
            module = denoiser.pick(*inputs)
        return module(*inputs)

    return predict


def _time_ids(unet: Any, latents: torch.Tensor, pooled_width: int, guided: bool, batch: int,
              aesthetic_scores: tuple[float, float]) -> torch.Tensor:
    """SDXL's size conditioning: (original size, crop, target size), or for a refiner (whose UNet
    embeds 5 numbers) (original size, crop, aesthetic score).  Rows: [negative,] positive per image."""
    height, width = latents.shape[2] * 8, latents.shape[3] * 8
    count = (unet.config.projection_class_embeddings_input_dim - pooled_width) // unet.config.addition_time_embed_dim
    if count == 5:
        rows = [[height, width, 0, 0, score] for score in ((aesthetic_scores[1], aesthetic_scores[0]) if guided
                                                            else (aesthetic_scores[0],))]
    else:
        rows = [[height, width, 0, 0, height, width]] * (2 if guided else 1)
    return torch.tensor(rows, dtype=torch.float32).repeat_interleave(batch, dim=0)


# --------------------------------------------------------------------------------------------
# VAE


# SD 1.x/2.x's VAE (this latent scale) computes in float16, as diffusers' SD pipelines run it, though its
# config asks for float32 by default (force_upcast); SDXL's overflows in float16 and is upcast when it asks.
SD_VAE_SCALING = 0.18215


def _vae_at_work(vae: Any) -> torch.dtype:
    """The dtype the VAE computes in, with the VAE moved to it once and kept there (moving the shared VAE
    back after each call cast its weights twice per image, and a compiled decode must not see them move)."""
    asks = getattr(vae.config, "force_upcast", False) and vae.config.scaling_factor != SD_VAE_SCALING
    if vae.dtype == torch.float16 and (asks or vae.__dict__.get("_invoke_nodes_overflowed")):
        vae.to(torch.float32)
    return vae.dtype


def _finite(vae: Any, run: Callable[[torch.dtype], torch.Tensor]) -> torch.Tensor:
    """run(the VAE's dtype); a float16 result that overflowed (inf or NaN: a VAE that needs float32 but does
    not say so) is computed again in float32, and the VAE stays in float32 from then on."""
    work = _vae_at_work(vae)
    result = run(work)
    if work != torch.float16 or bool(torch.isfinite(result).all()):
        return result
    from .compiled import _BUILD_LOCK

    log.warning("the VAE overflowed in float16; it computes in float32 from now on")
    with _BUILD_LOCK:  # no background compile may trace the VAE while its weights change
        vae.__dict__["_invoke_nodes_overflowed"] = True
        vae.__dict__.pop("_invoke_nodes_decoders", None)  # compiled for the float16 weights
        vae.to(torch.float32)
    return run(torch.float32)


def vae_scale(vae: Any) -> int:
    """Pixels per latent cell."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.inference_mode()
def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB pixels [b, 3, h, w] -> scaled latents (the distribution's mode: no sampling noise)."""
    latents = _finite(vae, lambda work: vae.encode((pixels.to(vae.device) * 2 - 1).to(work)).latent_dist.mode())
    return latents * vae.config.scaling_factor


class VaeDecoder(torch.nn.Module):
    """The VAE's decode as a module, to compile (SD1.5's 512² decode on an H200, GPU time: float16 21.6 ms
    eager, 7.7 ms compiled; float32 27.7 / 19.1 ms)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, scaled: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(scaled, return_dict=False)[0]


# The decoder's compile modes: without CUDA graphs, which would hold a large decode's activations
# (gigabytes at 1024²) while saving little: a decode is a few hundred large kernels.
DECODER_MODES = {"reduce-overhead": "default", "default": "default", "max-autotune": "max-autotune-no-cudagraphs",
                 "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs"}


def decoder_for(vae: Any, compile_mode: str, cache_dir: Path | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The VAE's decode: compiled in the background on a GPU when the denoiser compiles there, else eager."""
    mode = DECODER_MODES.get(compile_mode)
    if mode is None or vae.device.type != "cuda":
        return lambda scaled: vae.decode(scaled, return_dict=False)[0]
    made: dict[str, Any] = vae.__dict__.setdefault("_invoke_nodes_decoders", {})
    if mode not in made:
        from .compiled import BackgroundCompiled

        made[mode] = BackgroundCompiled(VaeDecoder(vae), mode, cache_dir, graphs_meanwhile=False)
    return lambda scaled: made[mode].pick(scaled)(scaled)


@torch.inference_mode()
def decode_latents(vae: Any, latents: torch.Tensor, tiled: bool = False, seamless_axes: str = "none",
                   compile_mode: str = "off", cache_dir: Path | None = None) -> list[Image.Image]:
    """Scaled latents -> RGB images; tiled decodes in overlapping tiles (diffusers' tiled_decode) to bound memory;
    seamless_axes: the decoder pads circularly along them (a tiling image).  A plain decode compiles as
    the denoiser does (compile_mode)."""
    from .compiled import _BUILD_LOCK
    from .seamless import seamless

    def decode(work: torch.dtype) -> torch.Tensor:
        # no background compile may trace the VAE while its convolutions pad circularly
        builds_held = _BUILD_LOCK if seamless_axes != "none" else contextlib.nullcontext()
        with builds_held, seamless(vae, seamless_axes):
            scaled = (latents.to(vae.device) / vae.config.scaling_factor).to(work)
            if tiled:
                return vae.tiled_decode(scaled, return_dict=False)[0]
            if seamless_axes != "none":
                return vae.decode(scaled, return_dict=False)[0]
            return decoder_for(vae, compile_mode, cache_dir)(scaled)

    pixels = _finite(vae, decode)
    array = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in array]


def image_to_tensor(image: Image.Image, size: tuple[int, int] | None = None, mode: str = "RGB") -> torch.Tensor:
    """A PIL image as a [1, c, h, w] float tensor in [0, 1] (resized to `size` first, if given)."""
    image = image.convert(mode)
    if size is not None and image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS if mode == "RGB" else Image.Resampling.NEAREST)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(image.height, image.width, -1)).permute(2, 0, 1)[None]


# --------------------------------------------------------------------------------------------
# The convenience nodes' whole generation, on the same pieces as the graph nodes


class Generator:
    """One txt2img / img2img / inpaint generation over a loaded pipeline (and optional VAE override)."""

    def __init__(self, pipe: Any, base: str, vae: Any = None, compile_mode: str = "off", cache_dir: Path | None = None,
                 embeddings: Callable[[str], Any] | None = None) -> None:
        self.pipe = pipe
        self.embeddings = embeddings
        self.base = base
        self.vae = vae if vae is not None else pipe.vae
        self.unet = pipe.unet
        self.compile_mode = compile_mode
        self.cache_dir = cache_dir
        self.inpaint_unet = self.unet.config.in_channels == 9

    def run(self, request: GenerationRequest, on_step: StepCallback) -> list[Image.Image]:
        from .conditioning import PromptEncoder

        size = (request.width, request.height)
        scale = vae_scale(self.vae)
        shape = (request.batch_size, 4, request.height // scale, request.width // scale)
        from .prompt_syntax import PromptSyntaxError

        encoder = PromptEncoder(self.pipe, self.base, embeddings=self.embeddings)
        positive = encoder.encode(request.prompt)
        try:
            negative = encoder.encode(request.negative_prompt)
        except PromptSyntaxError as exc:
            exc.field = "negative_prompt"
            raise
        latents = torch.zeros(shape)
        keep_mask = extra = None
        if request.init_image is not None:
            pixels = image_to_tensor(request.init_image, size)
            latents = encode_pixels(self.vae, pixels).repeat(request.batch_size, 1, 1, 1)
            if request.mask is not None:
                repaint = (image_to_tensor(request.mask, (shape[3], shape[2]), "L") > 0.5).float()
                if self.inpaint_unet:
                    pixel_mask = (image_to_tensor(request.mask, size, "L") > 0.5).float()
                    masked = encode_pixels(self.vae, pixels * (1 - pixel_mask) + 0.5 * pixel_mask)  # grey where repainted
                    extra = torch.cat([repaint.to(masked.device, masked.dtype), masked], dim=1).repeat(request.batch_size, 1, 1, 1)
                else:
                    keep_mask = 1 - repaint
        start = 1.0 - request.strength if request.init_image is not None else 0.0
        denoise_request = DenoiseRequest(positive=positive, negative=negative, latents=latents, seed=request.seed,
                                         steps=request.steps, cfg_scale=request.cfg_scale, sampler=request.scheduler,
                                         start=start, keep_mask=keep_mask, extra_channels=extra)
        result = denoise(self.unet, self.base, self.pipe.scheduler.config, denoise_request, on_step,
                         self.compile_mode, self.cache_dir)
        return decode_latents(self.vae, result, compile_mode=self.compile_mode, cache_dir=self.cache_dir)
