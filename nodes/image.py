"""Image utility nodes: load, save, show, make, resize, crop, blend, paste."""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from PIL import Image, ImageChops, ImageOps

from .core.untrusted import UntrustedInputError, open_image
from .base import BaseInvocation, ImageField, InputField, NodeInputError, SeedField
from .context import InvocationContext
from .outputs import ImageOutput

ResampleName = Literal["nearest", "bilinear", "bicubic", "lanczos"]
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def _stored(context, image: Image.Image) -> ImageOutput:
    return ImageOutput.of(context.images.save(image), image)


def _color(field: str, text: str) -> tuple[int, ...]:
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(text)
    except ValueError:
        raise NodeInputError(field, f"not a colour: {text!r} (use a name or #rrggbb)") from None


class LoadImageInvocation(BaseInvocation):
    """Load an image from a file, or from the image store by name."""

    type: Literal["load_image"] = "load_image"
    category: ClassVar[str] = "image"
    path: str = InputField("", description="Image file to load", kind="path")
    image_name: str = InputField("", description="Or: name of an image in the image store")

    def cache_salt(self) -> object:
        if self.path:
            try:
                stat = os.stat(self.path)
                return [stat.st_mtime_ns, stat.st_size]
            except OSError:
                return None
        return None

    def invoke(self, context: InvocationContext) -> ImageOutput:
        if self.image_name:
            try:
                image = context.images.get(self.image_name)
            except KeyError as exc:
                raise NodeInputError("image_name", str(exc)) from None
            return ImageOutput.of(ImageField(image_name=self.image_name), image)
        if not self.path:
            raise NodeInputError("path", "give a file path or an image_name")
        try:
            image = ImageOps.exif_transpose(open_image(Path(self.path).expanduser()))
        except FileNotFoundError:
            raise NodeInputError("path", f"no such file: {self.path}") from None
        except UntrustedInputError as exc:
            raise NodeInputError("path", f"cannot open {self.path}: {exc}") from None
        if image.mode not in ("RGB", "RGBA", "L"):
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        return _stored(context, image)


class SaveImageInvocation(BaseInvocation):
    """Save an image as PNG (the graph that made it travels in the file).  Where it may write:
    nodes/core/writes.py (the outputs folder, or folders allowed in the settings)."""

    type: Literal["save_image"] = "save_image"
    category: ClassVar[str] = "image"
    cacheable: ClassVar[bool] = False  # writing the file is the point
    image: ImageField = InputField(description="Image to save")
    folder: str = InputField("", description="Folder to write into: empty for the outputs folder's 'saved' folder, "
                                             "a relative folder inside the outputs folder", kind="path")
    filename: str = InputField("", description="File name (empty: image-<n>.png)")
    overwrite: bool = InputField(False, description="Replace a file of the same name (off: a numbered name)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.writes import file_name, target_folder, write_into

        name = file_name(self.filename or "image", ".png")
        folder = target_folder(context.outputs_dir, context.allowed_write_dirs, self.folder, "saved")
        overwrite = self.overwrite and bool(self.filename)
        try:
            write_into(folder, name, overwrite, lambda path: context.images.export(self.image, path))
        except OSError as exc:
            raise NodeInputError("folder", f"cannot write into {folder}: {exc.strerror or exc}") from None
        return ImageOutput.of(self.image, context.images.get(self.image))


class ShowImageInvocation(BaseInvocation):
    """Show an image: the canvas previews it, the CLI opens it with the system viewer."""

    type: Literal["show_image"] = "show_image"
    category: ClassVar[str] = "image"
    image: ImageField = InputField(description="Image to show")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return ImageOutput.of(self.image, context.images.get(self.image))


class SolidColorInvocation(BaseInvocation):
    """A new image filled with one colour."""

    type: Literal["solid_color"] = "solid_color"
    category: ClassVar[str] = "image"
    width: int = InputField(512, ge=1, le=16384, description="Width in pixels")
    height: int = InputField(512, ge=1, le=16384, description="Height in pixels")
    color: str = InputField("#808080", description="Colour name or #rrggbb")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return _stored(context, Image.new("RGB", (self.width, self.height), _color("color", self.color)))


class NoiseImageInvocation(BaseInvocation):
    """A new image of seeded random noise (smooth when `scale` > 1)."""

    type: Literal["noise_image"] = "noise_image"
    category: ClassVar[str] = "image"
    width: int = InputField(512, ge=1, le=16384, description="Width in pixels")
    height: int = InputField(512, ge=1, le=16384, description="Height in pixels")
    scale: int = InputField(16, ge=1, le=1024, description="Size of a noise cell in pixels")
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> ImageOutput:
        import numpy as np

        rng = np.random.default_rng(self.seed)
        small = rng.integers(0, 256, (max(1, self.height // self.scale), max(1, self.width // self.scale), 3), dtype=np.uint8)
        image = Image.fromarray(small, "RGB").resize((self.width, self.height), Image.Resampling.BICUBIC)
        return _stored(context, image)


class ResizeInvocation(BaseInvocation):
    """Resize an image to a width and height."""

    type: Literal["resize"] = "resize"
    category: ClassVar[str] = "image"
    image: ImageField = InputField(description="Image to resize")
    width: int = InputField(512, ge=1, le=16384, description="New width")
    height: int = InputField(512, ge=1, le=16384, description="New height")
    resample: ResampleName = InputField("bicubic", description="Resampling filter")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        image = context.images.get(self.image)
        return _stored(context, image.resize((self.width, self.height), _RESAMPLE[self.resample]))


class ScaleInvocation(BaseInvocation):
    """Scale an image by a factor."""

    type: Literal["scale"] = "scale"
    category: ClassVar[str] = "image"
    image: ImageField = InputField(description="Image to scale")
    factor: float = InputField(2.0, ge=0.01, le=16, description="Scale factor")
    resample: ResampleName = InputField("bicubic", description="Resampling filter")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        image = context.images.get(self.image)
        size = (max(1, round(image.width * self.factor)), max(1, round(image.height * self.factor)))
        return _stored(context, image.resize(size, _RESAMPLE[self.resample]))


class CropInvocation(BaseInvocation):
    """Crop a rectangle out of an image (areas outside the image become transparent)."""

    type: Literal["crop"] = "crop"
    category: ClassVar[str] = "image"
    image: ImageField = InputField(description="Image to crop")
    x: int = InputField(0, description="Left edge")
    y: int = InputField(0, description="Top edge")
    width: int = InputField(256, ge=1, le=16384, description="Width of the crop")
    height: int = InputField(256, ge=1, le=16384, description="Height of the crop")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        image = context.images.get(self.image)
        inside = 0 <= self.x and 0 <= self.y and self.x + self.width <= image.width and self.y + self.height <= image.height
        if not inside and image.mode != "RGBA":
            image = image.convert("RGBA")
        return _stored(context, image.crop((self.x, self.y, self.x + self.width, self.y + self.height)))


BlendMode = Literal["normal", "multiply", "screen", "add", "difference", "darken", "lighten"]


class BlendInvocation(BaseInvocation):
    """Blend two images: `alpha` of the top over the base (top is resized to fit)."""

    type: Literal["blend"] = "blend"
    category: ClassVar[str] = "image"
    base: ImageField = InputField(description="Bottom image")
    top: ImageField = InputField(description="Top image")
    alpha: float = InputField(0.5, ge=0, le=1, description="How much of the top image")
    mode: BlendMode = InputField("normal", description="Blend mode")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        base = context.images.get(self.base).convert("RGB")
        top = context.images.get(self.top).convert("RGB").resize(base.size, Image.Resampling.BICUBIC)
        mixed = {
            "normal": lambda: top, "multiply": lambda: ImageChops.multiply(base, top),
            "screen": lambda: ImageChops.screen(base, top), "add": lambda: ImageChops.add(base, top),
            "difference": lambda: ImageChops.difference(base, top),
            "darken": lambda: ImageChops.darker(base, top), "lighten": lambda: ImageChops.lighter(base, top),
        }[self.mode]()
        return _stored(context, Image.blend(base, mixed, self.alpha))


class PasteInvocation(BaseInvocation):
    """Paste one image onto another at (x, y), optionally through a mask."""

    type: Literal["paste"] = "paste"
    category: ClassVar[str] = "image"
    base: ImageField = InputField(description="Image to paste onto")
    image: ImageField = InputField(description="Image to paste")
    mask: ImageField | None = InputField(None, description="Optional mask: white keeps the pasted image")
    x: int = InputField(0, description="Left edge")
    y: int = InputField(0, description="Top edge")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        base = context.images.get(self.base).copy()
        image = context.images.get(self.image)
        mask = None
        if self.mask is not None:
            mask = context.images.get(self.mask).convert("L").resize(image.size)
        elif image.mode == "RGBA":
            mask = image
        base.paste(image, (self.x, self.y), mask)
        return _stored(context, base)
