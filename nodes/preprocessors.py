"""Control-image preprocessors: an image in, the image a ControlNet / T2I-Adapter reads out.

The weight-free ones are numpy (nodes/core/preprocess.py) and run in any process; the ones with a
network (HED, lineart) run in the AI worker with weights from <models>/preprocessors/
(services/models/preprocessor_files.py names the files); depth and OpenPose say which file goes where.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from PIL import Image

from .base import BaseInvocation, ImageField, InputField, NodeInputError, SeedField
from .context import InvocationContext
from .outputs import ImageOutput


def _rgb(context: InvocationContext, ref: ImageField) -> Any:
    import numpy as np

    return np.asarray(context.images.get(ref).convert("RGB"))


def _stored(context: InvocationContext, array: Any) -> ImageOutput:
    image = Image.fromarray(array).convert("RGB")
    return ImageOutput.of(context.images.save(image), image)


class CannyInvocation(BaseInvocation):
    """Canny edges, white on black (OpenCV's cv2.Canny, pixel for pixel)."""

    type: Literal["canny"] = "canny"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image to find edges in")
    low_threshold: int = InputField(100, ge=0, le=1020, description="Gradients below this are never edges")
    high_threshold: int = InputField(200, ge=0, le=1020, description="Gradients above this always are (and what joins them)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import canny

        return _stored(context, canny(_rgb(context, self.image), self.low_threshold, self.high_threshold))


class ThresholdInvocation(BaseInvocation):
    """Black and white: white where the image is brighter than the level."""

    type: Literal["threshold"] = "threshold"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    level: int = InputField(127, ge=0, le=255, description="Grey level (0-255) above which a pixel is white")
    invert: bool = InputField(False, description="White where darker instead")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import threshold

        return _stored(context, threshold(_rgb(context, self.image), self.level, self.invert))


class ScribbleInvocation(BaseInvocation):
    """Scribble lines (white on black) from an image by a difference of Gaussians (scribble_xdog)."""

    type: Literal["scribble"] = "scribble"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    level: int = InputField(32, ge=1, le=255, description="Contrast a line needs (lower: more lines)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import scribble

        return _stored(context, scribble(_rgb(context, self.image), self.level))


class BlurInvocation(BaseInvocation):
    """Gaussian blur (for blur / tile ControlNets)."""

    type: Literal["blur"] = "blur"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    sigma: float = InputField(5.0, ge=0.1, le=100, description="Standard deviation in pixels")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        import numpy as np

        from .core.preprocess import gaussian_blur

        blurred = gaussian_blur(_rgb(context, self.image).astype(np.float32), self.sigma)
        return _stored(context, np.clip(np.round(blurred), 0, 255).astype(np.uint8))


class TileResampleInvocation(BaseInvocation):
    """Downsample and scale back up: the soft input of tile ControlNets."""

    type: Literal["tile_resample"] = "tile_resample"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    levels: int = InputField(3, ge=0, le=6, description="Halvings (3: one pixel per 8x8 block, scaled back up)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import tile

        return _stored(context, tile(_rgb(context, self.image), self.levels))


class ColorPaletteInvocation(BaseInvocation):
    """The image as flat blocks of its average colours (colour ControlNet / T2I-Adapter)."""

    type: Literal["color_palette"] = "color_palette"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    cell: int = InputField(64, ge=2, le=1024, description="Block size in pixels")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import palette

        return _stored(context, palette(_rgb(context, self.image), self.cell))


class ContentShuffleInvocation(BaseInvocation):
    """The image warped through a smooth random map (the shuffle ControlNet's input), seeded."""

    type: Literal["content_shuffle"] = "content_shuffle"
    category: ClassVar[str] = "control"
    image: ImageField = InputField(description="Image")
    scale: int = InputField(256, ge=8, le=4096, description="Pixels between the random map's knots (smaller: finer shuffle)")
    seed: int = SeedField()

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.preprocess import content_shuffle

        return _stored(context, content_shuffle(_rgb(context, self.image), self.seed, self.scale))


# --------------------------------------------------------------------------------------------
# With weights


class _AnnotatorInvocation(BaseInvocation):
    """A preprocessor network from <models>/preprocessors/ (`model` empty: the standard file)."""

    category: ClassVar[str] = "control"
    runs_in_worker: ClassVar[bool] = True
    image: ImageField = InputField(description="Image")
    model: str = InputField("", description="Weights (empty: the standard file in <models>/preprocessors/)",
                            kind="model", model_kind="preprocessor")
    resolution: int = InputField(512, ge=64, le=4096, description="Shorter side the network sees (the output has the image's size)")

    def _weights(self, context: InvocationContext, architecture: str) -> str:
        try:
            if not self.model:
                return context.models.preprocessor(architecture).id
            info = context.models.get(self.model, kind="preprocessor")
        except KeyError as exc:
            raise NodeInputError("model", str(exc.args[0]) if exc.args else str(exc)) from None
        if getattr(info, "architecture", None) != architecture:
            raise NodeInputError("model", f"'{info.id}' holds {getattr(info, 'architecture', None)} weights, not {architecture}")
        return info.id

    def _run(self, context: InvocationContext, architecture: str, run: Any) -> ImageOutput:
        model_id = self._weights(context, architecture)
        image = context.images.get(self.image)
        try:
            with context.models.use(model_id) as (net,):
                result = run(net, image, self.resolution)
        except ValueError as exc:  # a file that does not load: the message names it
            raise NodeInputError("model", str(exc)) from None
        return ImageOutput.of(context.images.save(result), result)


class HEDInvocation(_AnnotatorInvocation):
    """HED soft edges (ControlNetHED.pth from lllyasviel/Annotators)."""

    type: Literal["hed"] = "hed"

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.annotators import run_hed

        return self._run(context, "hed", run_hed)


class LineartInvocation(_AnnotatorInvocation):
    """Line art, white on black (sk_model.pth, or sk_model2.pth when coarse, from lllyasviel/Annotators)."""

    type: Literal["lineart"] = "lineart"
    coarse: bool = InputField(False, description="The coarse model (bolder, fewer lines)")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.annotators import run_lineart

        return self._run(context, "lineart_coarse" if self.coarse else "lineart", run_lineart)


class DepthInvocation(_AnnotatorInvocation):
    """Depth map (MiDaS, dpt_hybrid-midas-501f0c75.pt): not runnable in this version; says which file it will read."""

    type: Literal["depth"] = "depth"

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return self._run(context, "depth", None)


class OpenPoseInvocation(_AnnotatorInvocation):
    """Body pose skeleton (body_pose_model.pth): not runnable in this version; says which file it will read."""

    type: Literal["openpose"] = "openpose"

    def invoke(self, context: InvocationContext) -> ImageOutput:
        return self._run(context, "openpose", None)
