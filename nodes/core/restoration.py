"""Running upscaler and face-restoration models (spandrel descriptors the model manager loaded).

Reading, probing and loading the files lives with the model manager (services/models/restoration_files.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

FACE_SIZE = 512  # GFPGAN / RestoreFormer / CodeFormer faces are FFHQ-aligned 512x512 crops


# --------------------------------------------------------------------------------------------
# Images <-> tensors


def image_to_tensor(image: Image.Image, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """PIL image -> (1, C, H, W) in [0, 1]; channels 1 (grey) or 3 (RGB), what the model reads."""
    mode = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """(1, C, H, W) in [0, 1] -> PIL image (rounded, so equal tensors give equal pixels)."""
    array = tensor[0].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L")
    return Image.fromarray(array, "RGB")


# --------------------------------------------------------------------------------------------
# Running models


def upscale_image(descriptor: Any, image: Image.Image, tile: int, overlap: int,
                  on_tile: Any = None) -> Image.Image:
    """Run an upscaler over a PIL image in tiles; alpha is resized alongside, grey stays grey."""
    from nodes.core.tiling import run_tiled

    alpha = image.getchannel("A") if "A" in image.getbands() else None
    grey = image.mode in ("L", "LA", "I", "I;16", "F")
    from spandrel import ModelTiling

    if descriptor.tiling == ModelTiling.INTERNAL:  # it tiles itself, or needs the whole picture
        tile, overlap = max(image.size), 0
    tensor = image_to_tensor(image, descriptor.input_channels, descriptor.device, descriptor.dtype)
    with torch.inference_mode():
        output = run_tiled(descriptor, tensor, descriptor.scale, tile, overlap, on_tile)
    result = tensor_to_image(output)
    if grey and result.mode != "L":
        result = result.convert("L")
    elif not grey and result.mode == "L":
        result = result.convert("RGB")
    if alpha is not None:
        result = result.convert("LA" if grey else "RGBA")
        result.putalpha(alpha.resize(result.size, Image.Resampling.BICUBIC))
    return result


def restore_face(descriptor: Any, face: Image.Image) -> Image.Image:
    """Restore one aligned face (any size; run at the model's 512x512) and return it at 512x512."""
    face = face.convert("RGB")
    if face.size != (FACE_SIZE, FACE_SIZE):
        face = face.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
    tensor = image_to_tensor(face, 3, descriptor.device, descriptor.dtype)
    with torch.inference_mode():
        if descriptor.architecture.id == "GFPGAN":
            # GFPGAN works in [-1, 1] (as the original GFPGANer feeds it); spandrel's call neither
            # converts nor keeps negative outputs.  The stored noise (randomize_noise=False) makes
            # results reproducible.
            output = descriptor.model(tensor * 2 - 1, return_rgb=False, randomize_noise=False)[0]
            output = (output + 1) / 2
        else:
            output = descriptor(tensor)
    return tensor_to_image(output)


