"""Restoration nodes: upscale (Real-ESRGAN, ESRGAN, SwinIR, HAT, ...) and face_restore (GFPGAN,
RestoreFormer).  Models load through the model manager (spandrel); torch loads only when they run."""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Literal

from PIL import Image
from pydantic import BaseModel

from .base import BaseInvocation, ImageField, InputField, NodeInputError, OutputField, with_article
from .context import InvocationContext
from .outputs import ImageOutput

UPSCALER = "upscaler"  # model kinds, as nodes.core.restoration names them (not imported: no torch here)
FACE_RESTORE = "face_restore"


@contextlib.contextmanager
def _using_model(context: InvocationContext, model_id: str, kind: str) -> Iterator[Any]:
    """The loaded spandrel descriptor for `model_id`, checked to be of `kind` before loading, and
    kept loaded (not evicted by another load) while the block runs."""
    if not model_id:
        raise NodeInputError("model", f"choose {with_article(kind.replace('_', ' '))} model")
    try:
        info = context.models.get(model_id)
    except KeyError as exc:  # the manager's message lists the known models
        raise NodeInputError("model", str(exc.args[0]) if exc.args else f"no model '{model_id}'") from None
    if info.kind != kind:
        raise NodeInputError("model", f"'{model_id}' is {with_article(info.kind.replace('_', ' '))} model, "
                                      f"not {with_article(kind.replace('_', ' '))} model")
    with contextlib.ExitStack() as stack:
        try:
            (descriptor,) = stack.enter_context(context.models.use(model_id))
        except ValueError as exc:  # the file is there but cannot be used: the reason names it
            raise NodeInputError("model", str(exc)) from None
        yield descriptor


def _stored(context: InvocationContext, image: Image.Image) -> ImageOutput:
    return ImageOutput.of(context.images.save(image), image)


class UpscaleInvocation(BaseInvocation):
    """Upscale an image with a super-resolution model, tile by tile so that large images fit.

    Tiles overlap and their seams are blended; `scale` resizes the model's output to another factor.
    """

    type: Literal["upscale"] = "upscale"
    category: ClassVar[str] = "restoration"
    runs_in_worker: ClassVar[bool] = True
    tags: ClassVar[tuple[str, ...]] = ("upscale", "esrgan", "super resolution")
    image: ImageField = InputField(description="Image to upscale")
    model: str = InputField(description="Upscaler model (Real-ESRGAN, ESRGAN, SwinIR, HAT, ...)",
                            kind="model", model_kind=UPSCALER)
    scale: float = InputField(0.0, ge=0, le=16, description="Output size factor; 0 keeps the model's own factor")
    tile_size: int = InputField(512, ge=32, le=8192, description="Tile size in input pixels (smaller uses less memory)")
    tile_overlap: int = InputField(32, ge=0, le=1024, description="Overlap of neighbouring tiles, blended to hide seams")

    def invoke(self, context: InvocationContext) -> ImageOutput:
        from .core.restoration import upscale_image

        if self.tile_overlap * 2 > self.tile_size:
            raise NodeInputError("tile_overlap", f"must be at most half the tile size ({self.tile_size})")
        image = context.images.get(self.image)

        def on_tile(done: int, total: int) -> None:
            context.progress(done, total, f"tile {done}/{total}")

        with _using_model(context, self.model, UPSCALER) as descriptor:
            context.raise_if_canceled()
            result = upscale_image(descriptor, image, self.tile_size, self.tile_overlap, on_tile)
        if self.scale and self.scale != descriptor.scale:
            size = (max(1, round(image.width * self.scale)), max(1, round(image.height * self.scale)))
            result = result.resize(size, Image.Resampling.LANCZOS)
        return _stored(context, result)


class FaceBox(BaseModel):
    """Where a face is, in image pixels (clipped to the image), and the detector's confidence."""

    type_tag: ClassVar[str] = "face_box"
    x: int
    y: int
    width: int
    height: int
    score: float


class FaceRestoreOutput(ImageOutput):
    faces: list[FaceBox] = OutputField(description="The restored faces' boxes, best score first (empty: none found)")


class FaceRestoreInvocation(BaseInvocation):
    """Restore faces with GFPGAN or RestoreFormer: detect and align each face, restore it, paste it back.

    With `aligned` the input is taken as one already aligned face crop (e.g. 512x512): no detector.
    Without a face (or none as large as `min_face_size`) the image passes through unchanged.
    """

    type: Literal["face_restore"] = "face_restore"
    category: ClassVar[str] = "restoration"
    version: ClassVar[str] = "1.1.0"
    runs_in_worker: ClassVar[bool] = True
    tags: ClassVar[tuple[str, ...]] = ("face", "gfpgan", "restoreformer")
    image: ImageField = InputField(description="Image with faces, or one aligned face")
    model: str = InputField(description="Face restoration model (GFPGAN, RestoreFormer)",
                            kind="model", model_kind=FACE_RESTORE)
    fidelity: float = InputField(0.0, ge=0, le=1, description="0: fully restored faces; 1: the original faces")
    aligned: bool = InputField(False, description="The image is one aligned face crop: restore it whole, no detector")
    detector: Literal["auto", "retinaface_resnet50", "blazeface"] = InputField(
        "auto", description="Face detector. auto: RetinaFace when <models folder>/face_detection holds its weights, "
                            "else BlazeFace (shipped with the app)")
    max_faces: int = InputField(0, ge=0, le=100, description="Restore at most this many faces, largest score first (0: all)")
    min_face_size: int = InputField(32, ge=0, le=4096, description="Skip faces whose box is smaller than this many pixels")

    @classmethod
    def migrate(cls, values: dict[str, Any], from_version: str) -> dict[str, Any]:
        if from_version == "1.0.0":  # 1.1.0 added detectors, min_face_size and the faces output
            # retinaface_resnet50 was the only detector then, not a choice: let auto fall back to BlazeFace
            return {**values, "detector": "auto"} if values.get("detector") == "retinaface_resnet50" else values
        return super().migrate(values, from_version)

    def invoke(self, context: InvocationContext) -> FaceRestoreOutput:
        image = context.images.get(self.image)
        detector = None if self.aligned else self._detector(context)  # before a costly model load
        with _using_model(context, self.model, FACE_RESTORE) as descriptor:
            if detector is None:
                result = self._restore_aligned(context, descriptor, image)
                boxes = [FaceBox(x=0, y=0, width=image.width, height=image.height, score=1.0)]
            else:
                result, boxes = self._restore_detected(context, descriptor, detector, image)
        return FaceRestoreOutput(image=context.images.save(result), width=result.width, height=result.height, faces=boxes)

    def _detector(self, context: InvocationContext) -> Any:
        try:
            return context.models.face_detector(self.detector)
        except (KeyError, ValueError) as exc:  # the message names the file and where it goes, or why it is unusable
            raise NodeInputError("detector", str(exc.args[0]) if exc.args else str(exc)) from None

    def _restore_one(self, descriptor: Any, face: Image.Image) -> Image.Image:
        from .core.faces import blend_fidelity
        from .core.restoration import restore_face

        return blend_fidelity(restore_face(descriptor, face), face, self.fidelity)

    def _restore_aligned(self, context: InvocationContext, descriptor: Any, image: Image.Image) -> Image.Image:
        context.progress(0, 1, "restoring the aligned face")
        restored = self._restore_one(descriptor, image)
        if restored.size != image.size:  # give back what came in: same size, mode kept
            restored = restored.resize(image.size, Image.Resampling.LANCZOS)
        return restored if image.mode == "RGB" else restored.convert(image.mode)

    def _restore_detected(self, context: InvocationContext, descriptor: Any, detector: Any,
                          image: Image.Image) -> tuple[Image.Image, list[FaceBox]]:
        from .core.faces import align_face, paste_face

        found = detector.detect(image)
        faces = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face_size]
        if self.max_faces:
            faces = faces[: self.max_faces]
        if not faces:
            smaller = f" ({len(found)} smaller than {self.min_face_size} px)" if found else ""
            context.progress(1, 1, f"no face found{smaller}: image unchanged")
            return image, []
        result = image
        for number, face in enumerate(faces, 1):
            context.progress(number - 1, len(faces), f"face {number}/{len(faces)}")
            crop, matrix = align_face(image, face)
            result = paste_face(result, self._restore_one(descriptor, crop), matrix)
        context.progress(len(faces), len(faces), f"{len(faces)} face{'s' if len(faces) > 1 else ''} restored")
        return result, [_box(face.box, face.score, image.size) for face in faces]


def _box(box: tuple[float, float, float, float], score: float, size: tuple[int, int]) -> FaceBox:
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(size[0], round(box[2])), min(size[1], round(box[3]))
    return FaceBox(x=x0, y=y0, width=max(0, x1 - x0), height=max(0, y1 - y0), score=round(score, 4))
