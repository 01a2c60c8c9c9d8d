"""Face alignment and paste-back for face restorers (the FFHQ 512 crop GFPGAN/RestoreFormer expect).

A face is given by five landmarks (eyes, nose, mouth corners).  A similarity transform maps them
onto the FFHQ template; the restored crop goes back through the inverse transform and is blended
in with a mask whose edges are eroded and blurred so that no crop border shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from nodes.core.restoration import FACE_SIZE

# Five landmarks of an FFHQ-aligned 512x512 face (facexlib's template, used by GFPGAN).
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
CROP_FILL = (135, 133, 132)  # what GFPGAN's helper puts where a crop reaches past the image edge
MASK_INSET = 26  # crop pixels (~5%) the paste mask keeps off the crop's edge, as GFPGAN's paste-back does


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2x3 matrix of the rotation + uniform scale + shift that best maps source onto target (Umeyama)."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    u, s, vt = np.linalg.svd(dst.T @ src / len(source))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1  # no reflections
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill: Any = 0) -> Image.Image:
    """Apply the forward 2x3 `matrix` (source -> destination pixels) to produce a `size` image."""
    inverse = _invert(matrix)  # PIL maps each destination pixel back to its source
    return image.transform(size, Image.Transform.AFFINE, tuple(inverse.ravel()), resample=Image.Resampling.BICUBIC,
                           fillcolor=fill)


def align_face(image: Image.Image, face: Face) -> tuple[Image.Image, np.ndarray]:
    """The face as a 512x512 FFHQ crop, and the image -> crop transform."""
    matrix = similarity_transform(np.asarray(face.landmarks, dtype=np.float64), FFHQ_TEMPLATE)
    return _warp(image.convert("RGB"), matrix, (FACE_SIZE, FACE_SIZE), CROP_FILL), matrix


def _blend_mask() -> Image.Image:
    """The crop's paste mask: inset, then blurred less than the inset, so it fades to zero inside
    the crop (the warped crop has no pixels outside it).  Built in crop space: the inverse warp
    scales it to the face's size, where eroding and blurring a large image would be slow."""
    mask = Image.new("L", (FACE_SIZE, FACE_SIZE), 0)
    ImageDraw.Draw(mask).rectangle((MASK_INSET, MASK_INSET, FACE_SIZE - 1 - MASK_INSET, FACE_SIZE - 1 - MASK_INSET), 255)
    return mask.filter(ImageFilter.GaussianBlur(MASK_INSET / 3))


def paste_face(image: Image.Image, restored: Image.Image, matrix: np.ndarray) -> Image.Image:
    """Blend a restored 512 crop back into the image through the inverse of its alignment."""
    back = _invert(matrix)
    warped = _warp(restored.convert("RGB"), back, image.size)
    mask = _warp(_blend_mask(), back, image.size)
    result = Image.composite(warped, image.convert("RGB"), mask)
    if image.mode != "RGB":
        result = result.convert(image.mode) if image.mode != "RGBA" else _keep_alpha(result, image)
    return result


def _keep_alpha(result: Image.Image, original: Image.Image) -> Image.Image:
    result = result.convert("RGBA")
    result.putalpha(original.getchannel("A"))
    return result


def blend_fidelity(restored: Image.Image, original: Image.Image, fidelity: float) -> Image.Image:
    """fidelity 0: the restored face; 1: the original crop unchanged."""
    if fidelity <= 0:
        return restored
    original = original.convert("RGB").resize(restored.size, Image.Resampling.LANCZOS)
    return Image.blend(restored, original, fidelity)
