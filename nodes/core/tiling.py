"""Run an image model tile by tile so that large images fit in memory, blending the seams.

Neighbouring tiles overlap; inside an overlap each tile's output is weighted by a linear ramp
that falls towards its inner edge, and the weighted sum is divided by the summed weights.  The
image border is never feathered, and an image that fits in one tile is run untiled (bit-exact).
"""
from __future__ import annotations

from typing import Callable

import torch

Model = Callable[[torch.Tensor], torch.Tensor]
TileCallback = Callable[[int, int], None]  # (tiles done, tiles in all); may raise to stop


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis: step tile - overlap, the last tile flush with the end."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def _ramp(size: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """1-D weights: rising over the first ramp_in samples, falling over the last ramp_out."""
    position = torch.arange(size, dtype=torch.float32) + 0.5
    weight = torch.ones(size)
    if ramp_in:
        weight = torch.minimum(weight, position / ramp_in)
    if ramp_out:
        weight = torch.minimum(weight, position.flip(0) / ramp_out)
    return weight


def run_tiled(model: Model, image: torch.Tensor, scale: int, tile: int, overlap: int,
              on_tile: TileCallback | None = None) -> torch.Tensor:
    """model(image) computed over tiles of `tile` input pixels overlapping by `overlap`.

    image: (1, C, H, W) on the model's device and dtype.  The result is float32 on the CPU, so
    only one tile at a time occupies the model's device.
    """
    _, _, height, width = image.shape
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = len(ys) * len(xs)
    if total == 1:
        result = model(image).float().cpu()
        if on_tile:
            on_tile(1, 1)
        return result
    output: torch.Tensor | None = None
    weights = torch.zeros(1, 1, height * scale, width * scale)
    feather = overlap * scale
    done = 0
    for y in ys:
        for x in xs:
            th, tw = min(tile, height - y), min(tile, width - x)
            out = model(image[:, :, y:y + th, x:x + tw]).float().cpu()
            if output is None:
                output = torch.zeros(1, out.shape[1], height * scale, width * scale)
            mask = (_ramp(th * scale, feather if y > 0 else 0, feather if y + th < height else 0)[:, None]
                    * _ramp(tw * scale, feather if x > 0 else 0, feather if x + tw < width else 0)[None, :])
            region = (slice(None), slice(None), slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale))
            output[region] += out * mask
            weights[region] += mask
            done += 1
            if on_tile:
                on_tile(done, total)
    assert output is not None
    return output / weights
