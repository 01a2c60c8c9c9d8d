"""Regional prompting: several conditionings evaluated every step, their noise predictions mixed by
weight maps (ComfyUI's ConditioningCombine with ConditioningSetMask / ConditioningSetArea).

A conditioning dict (nodes/core/conditioning.py) may carry, beside its tensors:
  mask      [h, w] float in [0, 1] (any size; resized to the latents bilinearly)
  area      (x, y, width, height) in pixels: the UNet sees only that window of the latents
  strength  the weight's scale (1 by default)
  regions   a list of such dicts: a combination (the top level repeats the first one's tensors, so
            checks of width and family read it like a plain conditioning)
Where several apply, the prediction is  sum(pred_i * weight_i) / sum(weight_i);  an area's weight
fades over 8 latent cells at its edges inside the image, as ComfyUI's does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .conditioning import pad_to

FEATHER = 8  # latent cells over which an area's weight fades in (ComfyUI's)
REGION_KEYS = ("mask", "area", "strength")


def entries(conditioning: dict[str, Any]) -> list[dict[str, Any]]:
    return list(conditioning.get("regions") or [conditioning])


def is_regional(conditioning: dict[str, Any]) -> bool:
    return any(key in e for e in entries(conditioning) for key in REGION_KEYS) or len(entries(conditioning)) > 1


def combined(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One conditioning holding every entry of `parts` (ComfyUI's ConditioningCombine)."""
    flat = [e for part in parts for e in entries(part)]
    if len({e["embeds"].shape[-1] for e in flat}) > 1:
        raise ValueError("the conditionings come from different model families")
    first = {k: v for k, v in flat[0].items() if k not in REGION_KEYS}
    return {**first, "regions": flat}


def with_each(conditioning: dict[str, Any], **values: Any) -> dict[str, Any]:
    """`values` set on every entry (ComfyUI's SetMask/SetArea apply to each entry of a combination)."""
    updated = [{**e, **values} for e in entries(conditioning)]
    return combined(updated) if "regions" in conditioning else updated[0]


class RegionsError(ValueError):
    def __init__(self, message: str, negative: bool) -> None:
        super().__init__(message)
        self.negative = negative


@dataclass
class Region:
    entry: dict[str, Any]
    negative: bool
    window: tuple[int, int, int, int]  # y, x, height, width in latent cells
    weight: torch.Tensor  # [1, 1, height, width] float32


def regions_of(conditioning: dict[str, Any], negative: bool, size: tuple[int, int], device: Any) -> list[Region]:
    """The entries that weigh anywhere in a latent image of `size` (h, w); an entry whose mask or
    area covers nothing is dropped (it cannot change the result)."""
    found = []
    for entry in entries(conditioning):
        window = _window(entry.get("area"), size)
        if window[2] <= 0 or window[3] <= 0:
            continue
        weight = _weight(entry, window, size).to(device)
        if bool((weight > 0).any()):
            found.append(Region(entry, negative, window, weight))
    return found


def _window(area: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = size
    if area is None:
        return 0, 0, height, width
    x, y, w, h = (v // 8 for v in area)  # pixels -> latent cells, as ComfyUI's SetArea
    x, y = min(x, width), min(y, height)
    return y, x, min(h, height - y), min(w, width - x)


def _weight(entry: dict[str, Any], window: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    y, x, h, w = window
    strength = float(entry.get("strength", 1.0))
    mask = entry.get("mask")
    if mask is not None:
        full = F.interpolate(mask.float()[None, None], size=size, mode="bilinear", align_corners=False)
        return full[:, :, y:y + h, x:x + w] * strength
    weight = torch.full((1, 1, h, w), strength)
    if entry.get("area") is not None:  # fade in across edges that lie inside the image
        ramp = torch.arange(1, FEATHER + 1, dtype=torch.float32) / FEATHER
        for dim, start, length, full_length in ((2, y, h, size[0]), (3, x, w, size[1])):
            n = min(FEATHER, length)
            shape = [1, 1, 1, 1]
            shape[dim] = n
            if start > 0:
                weight.narrow(dim, 0, n).mul_(ramp[:n].reshape(shape))
            if start + length < full_length:
                weight.narrow(dim, length - n, n).mul_(ramp[:n].flip(0).reshape(shape))
    return weight


def needs_regions(positive: dict[str, Any], negative: dict[str, Any], size: tuple[int, int]) -> bool:
    """False when, after dropping entries that cover nothing, each side is one plain full-image
    conditioning: the plain path then runs (bit-identical, one UNet call)."""
    for side, is_negative in ((positive, False), (negative, True)):
        if not is_regional(side):
            continue
        found = regions_of(side, is_negative, size, "cpu")
        if len(found) != 1 or found[0].window != (0, 0, *size) or not bool((found[0].weight == 1).all()):
            return True
    return False


def plain(conditioning: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
    """The one entry of a conditioning that needs no regions (see needs_regions)."""
    if not is_regional(conditioning):
        return conditioning
    return regions_of(conditioning, False, size, "cpu")[0].entry


class RegionalPredictor:
    """Noise predictions of every region per step: regions whose windows have one shape go through
    the UNet in one call (positive and negative together); the mix is done in float32."""

    def __init__(self, denoiser: Any, positive: dict[str, Any], negative: dict[str, Any] | None,
                 guidance: torch.Tensor | None, size: tuple[int, int], batch: int, device: Any, dtype: torch.dtype,
                 extra: torch.Tensor | None, time_ids: Callable[[bool], torch.Tensor] | None) -> None:
        """time_ids(negative): SDXL's size conditioning rows of one side ([batch, n]); None for SD 1.x/2.x."""
        self.denoiser, self.guidance, self.extra = denoiser, guidance, extra
        self.regions = regions_of(positive, False, size, device)
        if not self.regions:
            raise RegionsError("its masks and areas cover no part of the image", negative=False)
        if negative is not None:
            found = regions_of(negative, True, size, device)
            if not found:
                raise RegionsError("its masks and areas cover no part of the image", negative=True)
            self.regions += found
        groups: dict[tuple[int, int], list[Region]] = {}
        for region in self.regions:
            groups.setdefault(region.window[2:], []).append(region)
        self.groups = []
        self.modules: dict[int, Any] = {}
        for members in groups.values():
            tokens = max(r.entry["embeds"].shape[1] for r in members)
            embeds = torch.cat([pad_to(r.entry, tokens).to(device, dtype).expand(batch, -1, -1) for r in members])
            pooled = None
            if time_ids is not None:  # SDXL: pooled text beside the size conditioning, per row
                pooled = torch.cat([r.entry["pooled"].to(device, dtype).expand(batch, -1) for r in members])
            ids = torch.cat([time_ids(r.negative) for r in members]) if time_ids is not None else None
            self.groups.append((members, embeds, pooled, ids))

    def __call__(self, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])
        sums = {side: torch.zeros(shape, dtype=torch.float32, device=latents.device) for side in (False, True)}
        counts = {side: torch.zeros((1, 1, *shape[2:]), dtype=torch.float32, device=latents.device) for side in (False, True)}
        for number, (members, embeds, pooled, ids) in enumerate(self.groups):
            crops = torch.cat([_crop(latents, r.window) for r in members])
            extra = torch.cat([_crop(self.extra, r.window) for r in members]) if self.extra is not None else None
            inputs = (crops, t, embeds, None, extra, pooled, ids)
            if number not in self.modules:  # one module per group for the whole image, as the plain path
                self.modules[number] = self.denoiser.pick(*inputs)
            module = self.modules[number]
            predictions = module(*inputs).float().chunk(len(members))
            for region, prediction in zip(members, predictions):
                y, x, h, w = region.window
                sums[region.negative][:, :, y:y + h, x:x + w] += prediction * region.weight
                counts[region.negative][:, :, y:y + h, x:x + w] += region.weight
        cond = sums[False] / counts[False].clamp_min(1e-37)
        if self.guidance is None:
            return cond.to(latents.dtype)
        uncond = sums[True] / counts[True].clamp_min(1e-37)
        return (uncond + self.guidance.float() * (cond - uncond)).to(latents.dtype)


def _crop(tensor: torch.Tensor, window: tuple[int, int, int, int]) -> torch.Tensor:
    y, x, h, w = window
    return tensor[:, :, y:y + h, x:x + w]
