"""ControlNet, T2I-Adapter and IP-Adapter inside the one denoising loop.

ControlNets and T2I-Adapters travel on conditioning (controlnet_apply / t2i_adapter_apply add a
control to the "controls" list of a conditioning dict), as ComfyUI's ControlNetApplyAdvanced does:
a control carried by the positive and the negative applies to both rows of the guidance batch, one
carried by only one of them to its rows only.  `Steering` prepares them for a run and gives the
UNet's extra arguments each step: the residuals of the controls whose start/end range holds that
step, zeros when none does (one input structure for a compiled denoiser).  Control images are
stretched to the generation size with Lanczos, as diffusers' ControlNet pipelines (and InvokeAI's
"just_resize") do.

IP-Adapters are UNet patches (they add key/value projections to every cross-attention layer):
they ride on the UNet pin like LoRAs and are installed for one run, then the UNet's own attention
processors are put back (`ip_adapters_installed`).
"""
from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from .diffusion import compiled


def attach(conditioning: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """A copy of `conditioning` with one more control."""
    return {**conditioning, "controls": [*conditioning.get("controls", []), control]}


def make_control(kind: str, model_id: str, image: Image.Image, strength: float, start: float, end: float) -> dict[str, Any]:
    """A control as conditioning carries it (plain values and uint8 pixels: no model, picklable);
    the id tells the same control on the positive and the negative apart from another one."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy())
    return {"id": uuid.uuid4().hex, "kind": kind, "model_id": model_id, "image": pixels, "strength": float(strength),
            "start": float(start), "end": float(end)}


def controls_of(positive: dict[str, Any], negative: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[bool, bool]]]:
    """Each control once, with (on the negative rows, on the positive rows)."""
    found: dict[str, tuple[dict[str, Any], tuple[bool, bool]]] = {}
    for control in positive.get("controls", []):
        found[control["id"]] = (control, (False, True))
    for control in negative.get("controls", []):
        previous = found.get(control["id"])
        found[control["id"]] = (control, (True, previous is not None))
    return [item for item in found.values() if item[0]["strength"] != 0]  # strength 0: nothing to compute


def resized(pixels: torch.Tensor, size: tuple[int, int], grey: bool = False) -> torch.Tensor:
    """uint8 [h, w, 3] -> float [1, c, height, width] in [0, 1], stretched to `size` (width, height) with Lanczos."""
    image = Image.fromarray(pixels.numpy(), "RGB").convert("L" if grey else "RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(image.height, image.width, -1)).permute(2, 0, 1)[None]


class ControlNetRunner(torch.nn.Module):
    """One ControlNet call for the guidance batch, its residuals times a per-row scale (compiled like the denoiser)."""

    def __init__(self, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, hint: torch.Tensor, scale: torch.Tensor,
                text_embeds: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if text_embeds is not None else None
        down, mid = self.controlnet(sample, t, encoder_hidden_states=embeds, controlnet_cond=hint, added_cond_kwargs=added,
                                    return_dict=False)
        return [residual * scale for residual in (*down, mid)]

    def pick(self, *inputs: Any) -> "ControlNetRunner":
        return self


def residual_shapes(config: Any, rows: int, height: int, width: int) -> list[tuple[int, ...]]:
    """Shapes of a ControlNet's residuals (its down blocks', then the middle block's) for latents of a size."""
    channels = list(config.block_out_channels)
    shapes = [(rows, channels[0], height, width)]
    for level, width_here in enumerate(channels):
        shapes += [(rows, width_here, height, width)] * config.layers_per_block
        if level < len(channels) - 1:  # a stride-2 convolution with padding 1
            height, width = (height + 1) // 2, (width + 1) // 2
            shapes.append((rows, width_here, height, width))
    return shapes + [(rows, channels[-1], height, width)]


@dataclass
class ActiveControl:
    """A control ready for one run: on the run's device, images at the run's size, rows scaled."""

    kind: str
    steps: list[bool]  # for each step of the pass: does it apply
    scale: torch.Tensor  # [rows, 1, 1, 1]: strength where the row's conditioning carries it, else 0
    runner: Any = None  # ControlNet
    hint: torch.Tensor | None = None  # ControlNet: the image, one per row
    states: list[torch.Tensor] = field(default_factory=list)  # T2I-Adapter: its features, already scaled


def _applies(start: float, end: float, position: float, following: float) -> bool:
    """diffusers' rule: a step applies a control when it starts at or after `start` and ends at or before `end`."""
    return not (position < start or following > end)


def _sum(parts: list[list[torch.Tensor]]) -> list[torch.Tensor] | None:
    total = None
    for part in parts:
        total = part if total is None else [a + b for a, b in zip(total, part)]
    return total


@dataclass
class Steering:
    """Everything that steers one run beside the prompts.  Each step gives the UNet the same
    arguments (zeros where no control applies), so a compiled denoiser sees one input structure."""

    controls: list[ActiveControl]
    ip: IPAdapterRun | None
    ip_steps: list[list[bool]]  # per step, per IP-Adapter: does it apply
    zeros: dict[str, list[torch.Tensor]]
    _runners: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, controls: list[tuple[dict[str, Any], tuple[bool, bool], Any]], ip: IPAdapterRun | None, guided: bool,
           latents: torch.Tensor, span: tuple[int, int, int], compile_mode: str, cache_dir: Path | None) -> "Steering | None":
        """controls: (control, rows it is on, loaded model); span: (steps of the schedule done before
        this pass, steps in it, steps in the whole schedule).  None when nothing steers the run."""
        done, count, whole = span
        places = [((done + i) / whole, (done + i + 1) / whole) for i in range(count)]
        batch, device, dtype = latents.shape[0], latents.device, latents.dtype
        size = (latents.shape[3] * 8, latents.shape[2] * 8)
        active, controlnet_config = [], None
        for control, (on_negative, on_positive), model in controls:
            rows = ([on_negative] if guided else []) + [on_positive]
            steps = [_applies(control["start"], control["end"], *place) for place in places]
            if not any(rows) or not any(steps):  # no row reads it, or it applies to no step of this pass
                continue
            weights = torch.tensor([control["strength"] * on for on in rows for _ in range(batch)], dtype=dtype, device=device)
            item = ActiveControl(control["kind"], steps, weights[:, None, None, None])
            if control["kind"] == "controlnet":
                item.runner = compiled(model, "_invoke_nodes_denoisers", ControlNetRunner, compile_mode, cache_dir)
                controlnet_config = model.config  # every ControlNet of a stack gives residuals of the UNet's shapes
                item.hint = resized(control["image"], size).to(device, dtype).expand(len(weights), -1, -1, -1)
            else:
                grey = model.config.in_channels == 1  # sketch adapters read one channel
                states = model(resized(control["image"], size, grey).to(device, dtype))
                item.states = [state.expand(len(weights), -1, -1, -1) * item.scale for state in states]
            active.append(item)
        if not active and ip is None:
            return None
        zeros = {}
        rows_count = batch * (1 + guided)
        if controlnet_config is not None:
            shapes = residual_shapes(controlnet_config, rows_count, latents.shape[2], latents.shape[3])
            zeros["controlnet"] = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        t2i = next((c for c in active if c.runner is None), None)
        if t2i is not None:
            zeros["t2i_adapter"] = [torch.zeros_like(state) for state in t2i.states]
        ip_steps = [[_applies(s, e, *place) for s, e in ip.ranges] for place in places] if ip is not None else []
        if ip is not None:
            ip.prepare(guided, batch)
        return cls(active, ip, ip_steps, zeros)

    def step(self, index: int, sample: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, text_embeds: torch.Tensor | None,
             time_ids: torch.Tensor | None) -> dict[str, Any]:
        """The UNet's extra arguments for step `index` of the pass."""
        extra: dict[str, Any] = {}
        if "controlnet" in self.zeros:
            batch = torch.cat([sample] * (embeds.shape[0] // sample.shape[0]))
            outs = []
            for control in self.controls:
                if control.runner is not None and control.steps[index]:
                    inputs = (batch, t, embeds, control.hint, control.scale, text_embeds, time_ids)
                    runner = self._runners.setdefault(id(control), control.runner.pick(*inputs))  # one module per run
                    outs.append(runner(*inputs))
            residuals = _sum(outs) or self.zeros["controlnet"]
            extra["down_block_additional_residuals"] = residuals[:-1]
            extra["mid_block_additional_residual"] = residuals[-1]
        if "t2i_adapter" in self.zeros:
            states = [c.states for c in self.controls if c.runner is None and c.steps[index]]
            extra["down_intrablock_additional_residuals"] = _sum(states) or self.zeros["t2i_adapter"]
        if self.ip is not None:
            extra["image_embeds"] = self.ip.tokens_at(self.ip_steps[index])
            extra["ip_weights"] = tuple(self.ip.weights)  # a compiled denoiser is built per weight (processor attributes)
        return extra


# --------------------------------------------------------------------------------------------
# IP-Adapter


class _Tokens(torch.nn.Module):
    """Stands in for the UNet's IP-Adapter image projection during a run: the tokens come projected
    (once per run, by the real projection), zeros where an adapter does not apply at a step."""

    def forward(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        return tokens


@dataclass
class IPAdapterRun:
    """The IP-Adapters installed on a UNet for one run: their image tokens and when each applies.
    Zero tokens give zero keys and values: an adapter outside its range adds exactly nothing."""

    processors: list[Any]
    projection: Any  # diffusers' MultiIPAdapterImageProjection of the stack
    embeds: list[tuple[torch.Tensor, torch.Tensor]]  # (image, empty image) CLIP embeddings per adapter
    weights: list[float]
    ranges: list[tuple[float, float]]
    _tokens: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def prepare(self, guided: bool, batch: int) -> None:
        """Project the images for the guidance batch's rows ([empty image x batch,] image x batch, diffusers' order)."""
        rows = [torch.cat(([empty] * batch if guided else []) + [image] * batch) for image, empty in self.embeds]
        self._tokens = [(tokens, torch.zeros_like(tokens)) for tokens in self.projection(rows)]
        for processor in self.processors:
            processor.scale = list(self.weights)

    def tokens_at(self, applies: list[bool]) -> list[torch.Tensor]:
        return [tokens if on else zeros for (tokens, zeros), on in zip(self._tokens, applies)]


def _clip_embeds(clip_vision: Any, image: Image.Image, hidden: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, empty-image) embeddings as diffusers' IP-Adapter pipelines make them: the projected
    embedding and zeros, or (plus / full adapters) the penultimate hidden states of the image and of a black one."""
    from transformers import CLIPImageProcessor

    side = clip_vision.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    pixels = processor(image.convert("RGB"), return_tensors="pt").pixel_values.to(clip_vision.device, clip_vision.dtype)
    if not hidden:
        embeds = clip_vision(pixels).image_embeds[:, None]  # [1, images, width]
        return embeds, torch.zeros_like(embeds)
    states = [clip_vision(p, output_hidden_states=True).hidden_states[-2][:, None] for p in (pixels, torch.zeros_like(pixels))]
    return states[0], states[1]


@contextlib.contextmanager
def ip_adapters_installed(unet: Any, adapters: list[tuple[Any, Any, Image.Image, Any]]) -> Iterator[IPAdapterRun | None]:
    """Install IP-Adapters (weights, clip vision model, image, IPAdapterRef) on `unet` with diffusers'
    IP-Adapter attention processors and image projection; the UNet's own are put back after the block."""
    if not adapters:
        yield None
        return
    saved = (unet.attn_processors, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type)
    processors, projection = _built(unet, [weights for weights, *_ in adapters])
    with torch.inference_mode():
        embeds = [_clip_embeds(clip, image, weights.variant != "normal") for weights, clip, image, _ in adapters]
    try:
        unet.set_attn_processor(dict(processors))
        unet.encoder_hid_proj = _Tokens()
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        yield IPAdapterRun([p for p in processors.values() if hasattr(p, "to_k_ip")], projection,
                           [(a.to(unet.dtype), b.to(unet.dtype)) for a, b in embeds],
                           [ref.weight for *_, ref in adapters], [(ref.start, ref.end) for *_, ref in adapters])
    finally:
        unet.set_attn_processor(saved[0])
        unet.encoder_hid_proj = saved[1]
        unet.config.encoder_hid_dim_type = saved[2]


def _built(unet: Any, stack: list[Any]) -> tuple[dict[str, Any], Any]:
    """diffusers' processors and image projection for a stack of adapters, on the UNet's device and dtype.
    The last stack built is kept on the UNet: the same objects next run keep a compiled denoiser's graph."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    key = (str(unet.device), unet.dtype)
    cached = unet.__dict__.get("_invoke_nodes_ip_adapters")
    if cached is not None and cached[0] == key and len(cached[1]) == len(stack) and all(a is b for a, b in zip(cached[1], stack)):
        return cached[2]
    with torch.inference_mode():
        processors = unet._convert_ip_adapter_attn_to_diffusers([w.state for w in stack], low_cpu_mem_usage=False)
        projections = [unet._convert_ip_adapter_image_proj_to_diffusers(w.state["image_proj"], low_cpu_mem_usage=False)
                       for w in stack]
        for processor in processors.values():
            if isinstance(processor, torch.nn.Module):
                processor.to(unet.device, unet.dtype)
        projection = MultiIPAdapterImageProjection(projections).to(unet.device, unet.dtype)
    unet.__dict__["_invoke_nodes_ip_adapters"] = (key, list(stack), (processors, projection))
    return processors, projection
