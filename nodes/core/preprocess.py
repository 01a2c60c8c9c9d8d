"""Control-image preprocessors that need no weights, in numpy (no torch: they run in any process).

Each takes and returns uint8 arrays [h, w, c].  Canny follows OpenCV's cv2.Canny step by step
(3x3 Sobel with replicated borders, L1 magnitude, OpenCV's integer non-maximum suppression with
its tie rules, hysteresis over 8-neighbours; colour images: per pixel the channel of largest
magnitude), so it gives OpenCV's edges without OpenCV.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

_TG22 = 13573  # tan(22.5 degrees) * 2**15, OpenCV's


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(channel.astype(np.int32), 1, mode="edge")
    rows = p[:-2] + 2 * p[1:-1] + p[2:]  # smoothing down the columns, for dx
    dx = rows[:, 2:] - rows[:, :-2]
    cols = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]
    dy = cols[2:] - cols[:-2]
    return dx, dy


def canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Edges (255) of a uint8 [h, w] or [h, w, c] image, as cv2.Canny(image, low, high)."""
    if low > high:
        low, high = high, low
    low_i, high_i = int(np.floor(low)), int(np.floor(high))
    planes = image[..., None] if image.ndim == 2 else image
    gradients = [_sobel(planes[..., c]) for c in range(planes.shape[2])]
    dx, dy = gradients[0]
    magnitude = np.abs(dx) + np.abs(dy)
    for cdx, cdy in gradients[1:]:  # the first channel of largest magnitude wins, as OpenCV's
        m = np.abs(cdx) + np.abs(cdy)
        larger = m > magnitude
        magnitude, dx, dy = np.where(larger, m, magnitude), np.where(larger, cdx, dx), np.where(larger, cdy, dy)
    h, w = magnitude.shape
    mag = np.pad(magnitude, 1)  # zero outside the image
    centre = mag[1:-1, 1:-1]
    left, right = mag[1:-1, :-2], mag[1:-1, 2:]
    up, down = mag[:-2, 1:-1], mag[2:, 1:-1]
    up_left, up_right, down_left, down_right = mag[:-2, :-2], mag[:-2, 2:], mag[2:, :-2], mag[2:, 2:]
    ax = np.abs(dx).astype(np.int64)
    ay = np.abs(dy).astype(np.int64) << 15
    tg22 = ax * _TG22
    tg67 = tg22 + (ax << 16)
    horizontal = ay < tg22
    vertical = ay > tg67
    same_sign = (dx ^ dy) >= 0
    diagonal = np.where(same_sign, (centre > up_left) & (centre > down_right), (centre > up_right) & (centre > down_left))
    local_max = np.where(horizontal, (centre > left) & (centre >= right),
                         np.where(vertical, (centre > up) & (centre >= down), diagonal))
    candidate = local_max & (magnitude > low_i)
    strong = candidate & (magnitude > high_i)
    edges = _connected_to(candidate, strong)
    out = np.zeros((h, w), dtype=np.uint8)
    out[edges] = 255
    return out


def _connected_to(candidate: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The candidate pixels 8-connected (through candidates) to a seed: component labels by
    min-propagation with pointer jumping over the candidates only (a few dozen vectorised passes)."""
    h, w = candidate.shape
    count = int(candidate.sum())
    index = np.full((h + 2, w + 2), count, dtype=np.int64)  # candidate -> its number; others -> count
    index[1:-1, 1:-1][candidate] = np.arange(count)
    neighbours = [index[1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx][candidate]
                  for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    labels = np.arange(count + 1)  # the last: "no neighbour", larger than every label
    while True:
        smallest = labels[:-1].copy()
        for neighbour in neighbours:
            np.minimum(smallest, labels[neighbour], out=smallest)
        while True:  # jump: a label names a pixel whose own label may be smaller still
            jumped = smallest[smallest]
            if np.array_equal(jumped, smallest):
                break
            smallest = jumped
        if np.array_equal(smallest, labels[:-1]):
            break
        labels[:-1] = smallest
    seeded = np.zeros(count, dtype=bool)
    seeded[labels[:-1][seeds[candidate]]] = True
    out = np.zeros((h, w), dtype=bool)
    out[candidate] = seeded[labels[:-1]]
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Float Gaussian blur of [h, w, c] (or [h, w]) with reflected borders; kernel 8 sigma + 1 wide
    (OpenCV's size for float images)."""
    radius = max(1, int(round(sigma * 4)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return out


def threshold(image: np.ndarray, level: int, invert: bool) -> np.ndarray:
    """White where the grey value is above `level` (black when inverted), as cv2.THRESH_BINARY."""
    grey = np.asarray(Image.fromarray(image).convert("L"))
    above = grey > level
    return np.where(above != invert, 255, 0).astype(np.uint8)


def scribble(image: np.ndarray, level: int) -> np.ndarray:
    """Scribble lines by a difference of Gaussians (the sd-webui ControlNet's scribble_xdog):
    white where the fine blur is darker than the coarse one by more than level / 2."""
    rgb = image.astype(np.float32)
    fine, coarse = gaussian_blur(rgb, 0.5), gaussian_blur(rgb, 5.0)
    darker = np.clip(np.min(coarse - fine, axis=-1), 0, 255)
    return np.where(2 * np.ceil(darker) > level, 255, 0).astype(np.uint8)


def tile(image: np.ndarray, levels: int) -> np.ndarray:
    """Downsampled by 2**levels (area average) and scaled back up (bicubic): the blurred input
    tile ControlNets expect."""
    h, w = image.shape[:2]
    factor = 2 ** levels
    small = Image.fromarray(image).resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def palette(image: np.ndarray, cell: int) -> np.ndarray:
    """The colours of `cell`-pixel blocks (their average), each block one flat colour: the colour
    ControlNet / T2I-Adapter's input."""
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, -(-w // cell)), max(1, -(-h // cell))), Image.Resampling.BOX)
    big = np.asarray(small).repeat(cell, axis=0).repeat(cell, axis=1)
    return np.ascontiguousarray(big[:h, :w])


def content_shuffle(image: np.ndarray, seed: int, scale: int = 256) -> np.ndarray:
    """The shuffle ControlNet's input: the image resampled through a smooth random map of
    coordinates (controlnet_aux's ContentShuffleDetector, `scale` pixels per random knot), seeded."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)

    def smooth_field() -> np.ndarray:
        knots = rng.uniform(0, 1, (h // scale + 2, w // scale + 2)).astype(np.float32)
        field = np.asarray(Image.fromarray(knots, "F").resize((w + 2 * scale, h + 2 * scale), Image.Resampling.BICUBIC))
        field = field[scale:scale + h, scale:scale + w].astype(np.float64)
        field -= field.min()
        return field / max(field.max(), 1e-12)

    x, y = smooth_field() * (w - 1), smooth_field() * (h - 1)
    return _bilinear(image, x, y)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, image.shape[1] - 1), np.minimum(y0 + 1, image.shape[0] - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    pixels = image.astype(np.float64)
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x1] * fx
    bottom = pixels[y1, x0] * (1 - fx) + pixels[y1, x1] * fx
    return np.clip(np.round(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)
