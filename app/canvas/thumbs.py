"""Image -> texture data for Dear PyGui (pure numpy/PIL, so the invoker thread can do the work
and the render loop only uploads).  numpy is imported on first use: it is a third of the
canvas's start-up imports and no image exists before the first run."""
from __future__ import annotations

from typing import Any

from PIL import Image

THUMB = 128  # node thumbnails are fixed-size dynamic textures: the image is letterboxed into it
VIEWER = 512


def fit_rgba(image: Image.Image, size: int) -> Any:
    """`image` scaled to fit a size×size square, centred on transparent, as flat float32 RGBA 0..1."""
    picture = image.convert("RGBA")
    picture.thumbnail((size, size), Image.Resampling.BILINEAR)
    if picture.width < size and picture.height < size:  # small images are scaled up to fill the square
        scale = size / max(picture.width, picture.height)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.NEAREST)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(picture, ((size - picture.width) // 2, (size - picture.height) // 2))
    import numpy as np

    return (np.asarray(canvas, dtype=np.float32) / 255.0).ravel()


def image_rgba(image: Image.Image, limit: int) -> tuple[int, int, Any]:
    """(width, height, data) of `image` shrunk to at most limit px per side (for the viewer)."""
    import numpy as np

    picture = image.convert("RGBA")
    picture.thumbnail((limit, limit), Image.Resampling.BILINEAR)
    return picture.width, picture.height, (np.asarray(picture, dtype=np.float32) / 255.0).ravel()
