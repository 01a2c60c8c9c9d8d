"""Face alignment and paste-back for face restorers (the FFHQ 512 crop GFPGAN/RestoreFormer expect).

A face is given by five landmarks (eyes, nose, mouth corners).  A similarity transform maps them
onto the FFHQ template; the restored crop goes back through the inverse transform and is blended
in with a mask whose edges are eroded and blurred so that no crop border shows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from .restoration import FACE_SIZE

# Five landmarks of an FFHQ-aligned 512x512 face (facexlib's template, used by GFPGAN).
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)


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


def _warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Apply the forward 2x3 `matrix` (source -> destination pixels) to produce a `size` image."""
    inverse = _invert(matrix)  # PIL maps each destination pixel back to its source
    return image.transform(size, Image.Transform.AFFINE, tuple(inverse.ravel()), resample=Image.Resampling.BICUBIC)


def align_face(image: Image.Image, face: Face) -> tuple[Image.Image, np.ndarray]:
    """The face as a 512x512 FFHQ crop, and the image -> crop transform."""
    matrix = similarity_transform(np.asarray(face.landmarks, dtype=np.float64), FFHQ_TEMPLATE)
    return _warp(image.convert("RGB"), matrix, (FACE_SIZE, FACE_SIZE)), matrix


def paste_face(image: Image.Image, restored: Image.Image, matrix: np.ndarray) -> Image.Image:
    """Blend a restored 512 crop back into the image through the inverse of its alignment."""
    back = _invert(matrix)
    warped = _warp(restored.convert("RGB"), back, image.size)
    mask = _warp(Image.new("L", (FACE_SIZE, FACE_SIZE), 255), back, image.size)
    scale = float(np.sqrt(abs(np.linalg.det(back[:, :2]))))  # crop pixel -> image pixels
    erode = max(1, int(round(2 * scale))) * 2 + 1  # drop the resampled border of the warped square
    feather = max(1.0, 10 * scale)  # soft edge in proportion to the face's size
    mask = mask.filter(ImageFilter.MinFilter(erode)).filter(ImageFilter.GaussianBlur(feather))
    base = image.convert("RGB")
    result = Image.composite(warped, base, mask)
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
