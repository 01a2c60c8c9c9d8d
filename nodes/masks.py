"""Masks and outpainting.  A mask is a greyscale image: white is redrawn, black is kept (what the
inpaint node and denoise_latents' mask read).  PIL only: these run in the app's process."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from PIL import Image, ImageChops, ImageFilter

from .base import BaseInvocation, BaseInvocationOutput, ImageField, InputField, NodeInputError, OutputField
from .context import InvocationContext
from .image import _color, _stored
from .outputs import ImageOutput


def _mask(context: InvocationContext, ref: ImageField) -> Image.Image:
    return context.images.get(ref).convert("L")


class MaskFromAlphaInvocation(BaseInvocation):
    """A mask that is white where the image is transparent (what to fill in)."""

    type: Literal["mask_from_alpha"] = "mask_from_alpha"
    category: ClassVar[str] = "mask"
    image: ImageField = InputField(description="Image with transparency")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        image = context.images.get(self.image)
        if "A" not in image.getbands():
            raise NodeInputError("image", f"the image has no alpha channel (mode {image.mode})")
        return _stored(context, ImageChops.invert(image.getchannel("A")))


class MaskFromColorInvocation(BaseInvocation):
    """A mask that is white where the image has a colour (within a tolerance)."""

    type: Literal["mask_from_color"] = "mask_from_color"
    category: ClassVar[str] = "mask"
    image: ImageField = InputField(description="Image")
    color: str = InputField("#ffffff", description="Colour name or #rrggbb")
    tolerance: int = InputField(0, ge=0, le=255, description="Largest difference per channel still counted as the colour")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        import numpy as np

        rgb = np.asarray(context.images.get(self.image).convert("RGB"), dtype=np.int16)
        target = np.array(_color("color", self.color)[:3], dtype=np.int16)
        close = (np.abs(rgb - target) <= self.tolerance).all(axis=2)
        return _stored(context, Image.fromarray((close * 255).astype(np.uint8), "L"))


class MaskInvertInvocation(BaseInvocation):
    """Swap a mask's white and black."""

    type: Literal["mask_invert"] = "mask_invert"
    category: ClassVar[str] = "mask"
    mask: ImageField = InputField(description="Mask")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return _stored(context, ImageChops.invert(_mask(context, self.mask)))


class MaskGrowInvocation(BaseInvocation):
    """Grow a mask's white part by some pixels."""

    type: Literal["mask_grow"] = "mask_grow"
    category: ClassVar[str] = "mask"
    mask: ImageField = InputField(description="Mask")
    pixels: int = InputField(8, ge=1, le=256, description="How far")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return _stored(context, _mask(context, self.mask).filter(ImageFilter.MaxFilter(2 * self.pixels + 1)))


class MaskShrinkInvocation(BaseInvocation):
    """Shrink a mask's white part by some pixels."""

    type: Literal["mask_shrink"] = "mask_shrink"
    category: ClassVar[str] = "mask"
    mask: ImageField = InputField(description="Mask")
    pixels: int = InputField(8, ge=1, le=256, description="How far")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return _stored(context, _mask(context, self.mask).filter(ImageFilter.MinFilter(2 * self.pixels + 1)))


class MaskBlurInvocation(BaseInvocation):
    """Soften a mask's edge (Gaussian blur)."""

    type: Literal["mask_blur"] = "mask_blur"
    category: ClassVar[str] = "mask"
    mask: ImageField = InputField(description="Mask")
    radius: float = InputField(4.0, ge=0, le=256, description="Blur radius in pixels")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return _stored(context, _mask(context, self.mask).filter(ImageFilter.GaussianBlur(self.radius)))


class MaskCombineInvocation(BaseInvocation):
    """Combine two masks: union (either white), intersect (both white) or subtract (first minus second)."""

    type: Literal["mask_combine"] = "mask_combine"
    category: ClassVar[str] = "mask"
    first: ImageField = InputField(description="First mask")
    second: ImageField = InputField(description="Second mask")
    mode: Literal["union", "intersect", "subtract"] = InputField("union", description="How")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        a, b = _mask(context, self.first), _mask(context, self.second)
        if a.size != b.size:
            raise NodeInputError("second", f"masks differ in size: {a.width}x{a.height} and {b.width}x{b.height}")
        operation = {"union": ImageChops.lighter, "intersect": ImageChops.darker, "subtract": ImageChops.subtract}[self.mode]
        return _stored(context, operation(a, b))


class PadOutput(BaseInvocationOutput):
    image: ImageField = OutputField(description="The padded image")
    mask: ImageField = OutputField(description="White over the new border (feathered into the image)")
    width: int = OutputField(description="Width in pixels")
    height: int = OutputField(description="Height in pixels")


class ImagePadForOutpaintInvocation(BaseInvocation):
    """Add a border to draw into (outpainting); returns the padded image and its mask."""

    type: Literal["image_pad_for_outpaint"] = "image_pad_for_outpaint"
    category: ClassVar[str] = "mask"
    image: ImageField = InputField(description="Image to extend")
    left: int = InputField(0, ge=0, le=4096, multiple_of=8, description="Pixels added on the left")
    top: int = InputField(0, ge=0, le=4096, multiple_of=8, description="Pixels added at the top")
    right: int = InputField(128, ge=0, le=4096, multiple_of=8, description="Pixels added on the right")
    bottom: int = InputField(0, ge=0, le=4096, multiple_of=8, description="Pixels added at the bottom")
    feather: int = InputField(16, ge=0, le=512, description="How far the mask fades into the image, in pixels")

    def invoke(self, context: InvocationContext) -> PadOutput:
        import numpy as np

        source = context.images.get(self.image).convert("RGB")
        width, height = source.width + self.left + self.right, source.height + self.top + self.bottom
        array = np.asarray(source)
        # the border starts as the image's edge pixels stretched outwards: better for the sampler than flat grey
        padded = np.pad(array, ((self.top, self.bottom), (self.left, self.right), (0, 0)), mode="edge")
        inside = np.zeros((height, width), dtype=np.float32)
        inside[self.top:self.top + source.height, self.left:self.left + source.width] = 1.0
        if self.feather:
            distance = _distance_from_border(source.size, (self.left, self.top, self.right, self.bottom))
            inside[self.top:self.top + source.height, self.left:self.left + source.width] = np.clip(distance / self.feather, 0, 1)
        mask = Image.fromarray(((1.0 - inside) * 255).round().astype(np.uint8), "L")
        image = Image.fromarray(padded, "RGB")
        return PadOutput(image=context.images.save(image), mask=context.images.save(mask), width=width, height=height)


def _distance_from_border(size: tuple[int, int], pads: tuple[int, int, int, int]) -> Any:
    """Per pixel of the source, its distance to the nearest padded side (sides without padding count as far)."""
    import numpy as np

    width, height = size
    left, top, right, bottom = pads
    x, y = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    far_x, far_y = np.full(width, np.inf, dtype=np.float32), np.full(height, np.inf, dtype=np.float32)
    dx = np.minimum(x + 1 if left else far_x, width - x if right else far_x)
    dy = np.minimum(y + 1 if top else far_y, height - y if bottom else far_y)
    return np.minimum(dx[None, :], dy[:, None])
