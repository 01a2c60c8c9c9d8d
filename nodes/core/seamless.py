"""Seamless tiling: the model's 2-D convolutions pad circularly along x, y or both for a block (as
InvokeAI's seamless does), so what they draw continues across the opposite edge; restored after."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F

SEAMLESS_AXES = ("none", "x", "y", "both")


def _padded_forward(layer: torch.nn.Conv2d, x_mode: str, y_mode: str) -> Any:
    left, right, top, bottom = layer._reversed_padding_repeated_twice

    def forward(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        padded = F.pad(F.pad(input, (left, right, 0, 0), mode=x_mode), (0, 0, top, bottom), mode=y_mode)
        return F.conv2d(padded, weight, bias, layer.stride, 0, layer.dilation, layer.groups)

    return forward


@contextlib.contextmanager
def seamless(model: torch.nn.Module, axes: str) -> Iterator[None]:
    if axes not in SEAMLESS_AXES:
        raise ValueError(f"seamless must be one of {', '.join(SEAMLESS_AXES)}, not '{axes}'")
    if axes == "none":
        yield
        return
    x_mode = "circular" if axes in ("x", "both") else "constant"
    y_mode = "circular" if axes in ("y", "both") else "constant"
    # only zero-padded convolutions that pad: 1x1 projections have nothing to wrap
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.padding_mode == "zeros"
              and isinstance(m.padding, tuple) and any(m.padding)]
    try:
        for layer in layers:
            layer._conv_forward = _padded_forward(layer, x_mode, y_mode)  # type: ignore[method-assign]
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("_conv_forward", None)
