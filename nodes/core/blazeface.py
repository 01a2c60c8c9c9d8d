"""BlazeFace (MediaPipe's face detector) in PyTorch, run from the operator graph of its .tflite file.

The network is built from the file's own operators (convolutions, depthwise convolutions, adds,
pads, pools, bilinear upsampling, reshapes), so the short- and full-range models need no
hand-written architecture; services/models/tflite_graph.py reads the flatbuffer into a
`TfliteGraph`.  Decoding follows MediaPipe's face_detection_*_common.pbtxt: SSD anchors of unit
size, box and six keypoints as pixel offsets at the model's input size, sigmoid scores, weighted
non-maximum suppression.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nodes.core.faces import FFHQ_TEMPLATE, Face

SCORE_THRESHOLD = 0.5  # MediaPipe's min_score_thresh
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold
RAW_SCORE_LIMIT = 100.0  # MediaPipe clips the logits before the sigmoid
# Mouth width over eye distance in the FFHQ template: BlazeFace gives only the mouth centre, so
# its corners are placed along the eye line at the template's proportion.
MOUTH_TO_EYES = float(np.linalg.norm(FFHQ_TEMPLATE[4] - FFHQ_TEMPLATE[3])
                      / np.linalg.norm(FFHQ_TEMPLATE[1] - FFHQ_TEMPLATE[0]))


@dataclass(frozen=True)
class GraphOp:
    kind: str  # the TFLite builtin operator name, e.g. CONV_2D
    inputs: tuple[int, ...]  # tensor indices; -1: an optional input left out
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TfliteGraph:
    """One subgraph of a .tflite file: operators in execution order over tensors in NHWC layout."""

    ops: list[GraphOp]
    constants: dict[int, np.ndarray]  # weights (float32) and shape/padding operands
    input: int
    outputs: tuple[int, ...]
    input_size: int  # the square input's side in pixels


@dataclass(frozen=True)
class BlazeFaceSpec:
    """Anchor layout of one model file (MediaPipe's SsdAnchorsCalculator options)."""

    input_size: int
    strides: tuple[int, ...]
    anchors_per_layer: int  # 2 with interpolated_scale_aspect_ratio 1.0, else 1


SPECS = {
    "short_range": BlazeFaceSpec(128, (8, 16, 16, 16), 2),  # faces within ~2 m: portraits, selfies
    "full_range": BlazeFaceSpec(192, (4,), 1),  # faces within ~5 m: groups, smaller faces
}


def anchors(spec: BlazeFaceSpec) -> torch.Tensor:
    """Anchor centres (x, y) relative to the input, in the order of the network's outputs."""
    centres: list[tuple[float, float]] = []
    layer = 0
    while layer < len(spec.strides):
        stride, repeats = spec.strides[layer], 0
        while layer < len(spec.strides) and spec.strides[layer] == stride:
            repeats += spec.anchors_per_layer
            layer += 1
        cells = spec.input_size // stride
        for y in range(cells):
            for x in range(cells):
                centres.extend([((x + 0.5) / cells, (y + 0.5) / cells)] * repeats)
    return torch.tensor(centres, dtype=torch.float32)


def _same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's SAME padding: the odd pixel goes after (PyTorch would pad symmetrically)."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


_ACTIVATIONS = {0: lambda x: x, 1: F.relu, 3: F.relu6}  # TFLite ActivationFunctionType: NONE, RELU, RELU6


class TfliteNet(nn.Module):
    """Runs a TfliteGraph with PyTorch; 4-D tensors are kept NCHW between operators."""

    SUPPORTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "MAX_POOL_2D", "PAD", "RESIZE_BILINEAR",
                 "RESHAPE", "CONCATENATION"}

    def __init__(self, graph: TfliteGraph, name: str) -> None:
        super().__init__()
        unknown = sorted({op.kind for op in graph.ops} - self.SUPPORTED)
        if unknown:
            raise ValueError(f"{name}: unsupported TFLite operators {', '.join(unknown)}")
        for op in graph.ops:
            if op.options.get("activation", 0) not in _ACTIVATIONS:
                raise ValueError(f"{name}: {op.kind} with unsupported fused activation {op.options['activation']}")
            if op.kind == "RESIZE_BILINEAR" and (op.options["align_corners"] or not op.options["half_pixel_centers"]):
                raise ValueError(f"{name}: only half-pixel-centre bilinear resizing is supported")
        self.graph = graph
        self._weights: dict[int, str] = {}
        for op in graph.ops:
            if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                kernel = torch.from_numpy(graph.constants[op.inputs[1]])
                # TFLite kernels: conv (out, kh, kw, in), depthwise (1, kh, kw, out)
                kernel = kernel.permute(0, 3, 1, 2) if op.kind == "CONV_2D" else kernel.permute(3, 0, 1, 2)
                self._register(op.inputs[1], kernel.contiguous())
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    self._register(op.inputs[2], torch.from_numpy(graph.constants[op.inputs[2]]))

    def _register(self, index: int, tensor: torch.Tensor) -> None:
        self._weights[index] = f"t{index}"
        self.register_buffer(f"t{index}", tensor)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """`image`: (1, 3, size, size) in [-1, 1]; returns the graph's outputs (NHWC order for 3-D)."""
        values: dict[int, torch.Tensor] = {self.graph.input: image}
        for op in self.graph.ops:
            values[op.outputs[0]] = self._run(op, values)
        return [values[index] for index in self.graph.outputs]

    def _run(self, op: GraphOp, values: dict[int, torch.Tensor]) -> torch.Tensor:
        o, x = op.options, values.get(op.inputs[0])
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight = getattr(self, self._weights[op.inputs[1]])
            bias = getattr(self, self._weights[op.inputs[2]]) if op.inputs[2] in self._weights else None
            if o["padding"] == "SAME":
                top, bottom = _same_padding(x.shape[2], weight.shape[2], o["stride"][0], o["dilation"][0])
                left, right = _same_padding(x.shape[3], weight.shape[3], o["stride"][1], o["dilation"][1])
                x = F.pad(x, (left, right, top, bottom))
            groups = x.shape[1] if op.kind == "DEPTHWISE_CONV_2D" else 1
            x = F.conv2d(x, weight, bias, o["stride"], 0, o["dilation"], groups)
            return _ACTIVATIONS[o["activation"]](x)
        if op.kind == "ADD":
            return _ACTIVATIONS[o["activation"]](x + values[op.inputs[1]])
        if op.kind == "RELU":
            return F.relu(x)
        if op.kind == "MAX_POOL_2D":
            if o["padding"] == "SAME":
                top, bottom = _same_padding(x.shape[2], o["filter"][0], o["stride"][0])
                left, right = _same_padding(x.shape[3], o["filter"][1], o["stride"][1])
                x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
            return F.max_pool2d(x, o["filter"], o["stride"])
        if op.kind == "PAD":  # BlazeFace pads channels: 4-D tensors
            pads = self.graph.constants[op.inputs[1]]  # (before, after) per NHWC axis
            return F.pad(x, [int(v) for axis in (2, 1, 3, 0) for v in pads[axis]])  # F.pad: W, H, C, N of NCHW
        if op.kind == "RESIZE_BILINEAR":  # half-pixel centres (checked in __init__), as PyTorch's default
            height, width = (int(v) for v in self.graph.constants[op.inputs[1]])
            return F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
        if op.kind == "RESHAPE":
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)  # the file's shapes are NHWC
            return x.reshape(o["shape"])
        if op.kind == "CONCATENATION":
            parts = [values[i] for i in op.inputs]
            axis = o["axis"] % parts[0].dim()
            if parts[0].dim() == 4:
                axis = (0, 2, 3, 1)[axis]
            return _ACTIVATIONS[o["activation"]](torch.cat(parts, axis))
        raise AssertionError(op.kind)  # excluded in __init__


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:], boxes[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (area + areas - inter).clamp(min=1e-12)


def weighted_nms(detections: torch.Tensor, scores: torch.Tensor, iou: float = NMS_IOU) -> list[tuple[torch.Tensor, float]]:
    """MediaPipe's weighted NMS: each kept detection is the score-weighted mean of those it overlaps.
    `detections` (N, 16): box x0, y0, x1, y1 then six keypoints."""
    order = scores.argsort(descending=True)
    detections, scores = detections[order], scores[order]
    kept = []
    remaining = torch.ones(len(scores), dtype=torch.bool)
    for first in range(len(scores)):
        if not remaining[first]:
            continue
        overlap = remaining & (_iou(detections[first, :4], detections[:, :4]) > iou)
        overlap[first] = True
        weights = scores[overlap][:, None]
        kept.append(((detections[overlap] * weights).sum(0) / weights.sum(), float(scores[first])))
        remaining &= ~overlap
    return kept


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """BlazeFace's eyes, nose tip and mouth centre -> the FFHQ template's five points (eyes, nose,
    mouth corners): the corners lie on the mouth centre, along the eye line."""
    eye_left, eye_right, nose, mouth = keypoints[:4]
    half_mouth = (eye_right - eye_left) * MOUTH_TO_EYES / 2
    return np.stack([eye_left, eye_right, nose, mouth - half_mouth, mouth + half_mouth])


Square = tuple[float, float, float]  # x0, y0, side of a square region in image pixels (may reach outside)


class BlazeFaceNet:
    """One BlazeFace model: its network and anchors."""

    def __init__(self, graph: TfliteGraph, spec: BlazeFaceSpec, name: str, device: torch.device) -> None:
        if graph.input_size != spec.input_size:
            raise ValueError(f"{name}: input {graph.input_size}x{graph.input_size}, expected {spec.input_size}")
        self.spec = spec
        self.anchors = anchors(spec)
        self.network = TfliteNet(graph, name).to(device).eval()
        self.device = device

    def detections(self, image: Image.Image, region: Square, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces in a square region of the image (outside the image: black, as MediaPipe letterboxes):
        (N, 16) box corners and six keypoints in image pixels, and (N,) scores."""
        size = self.spec.input_size
        x0, y0, side = region
        crop = image.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))
        pixels = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 127.5 - 1
        with torch.inference_mode():
            regressors, logits = self.network(torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(self.device))
        raw = regressors[0].float().cpu().reshape(-1, 8, 2) / size
        scores = torch.sigmoid(logits[0, :, 0].float().cpu().clamp(-RAW_SCORE_LIMIT, RAW_SCORE_LIMIT))
        keep = (scores > threshold) & (raw[:, 1] > 0).all(1)  # MediaPipe drops boxes without width or height
        raw, scores, centres = raw[keep], scores[keep], self.anchors[keep]
        centre, extent = raw[:, 0] + centres, raw[:, 1]
        points = torch.cat([centre - extent / 2, centre + extent / 2, (raw[:, 2:] + centres[:, None]).reshape(-1, 12)], 1)
        scale, origin = crop.width, torch.tensor([round(x0), round(y0)], dtype=torch.float32).repeat(8)
        return points * scale + origin, scores


class BlazeFaceDetector:
    """MediaPipe's two BlazeFace models together.  `detect(image)` returns faces, best score first.

    Proposals come from the short-range model on the whole image (faces that fill much of it) and
    the full-range model on the whole image and, for large images, on overlapping half-size tiles
    (it finds faces down to ~6% of its input: ~3% of the longer side).  Each proposal is then looked
    at again by the short-range model in a square of REFINE_CONTEXT times its size, where the face
    fills the input as that model expects: its keypoints are 2-3x closer to hand-marked ones than
    those of the first pass, and a proposal it does not confirm is dropped.
    """

    REFINE_CONTEXT = 2.5
    TILE_FROM = 768  # longer side from which the full-range model also runs on tiles

    def __init__(self, graphs: dict[str, TfliteGraph], device: str | torch.device = "cpu") -> None:
        missing = set(SPECS) - set(graphs)
        if missing:
            raise ValueError(f"BlazeFace needs the {' and '.join(sorted(missing))} model too")
        device = torch.device(device)
        self.short, self.full = (BlazeFaceNet(graphs[name], SPECS[name], name, device)
                                 for name in ("short_range", "full_range"))

    def _proposals(self, image: Image.Image, threshold: float) -> list[tuple[torch.Tensor, float]]:
        side = max(image.size)
        whole = ((image.width - side) / 2, (image.height - side) / 2, side)
        runs = [(self.short, whole), (self.full, whole)]
        if side >= self.TILE_FROM:
            tile = min(side / 2, min(image.size))  # a wide picture: tiles as tall as it, not letterboxed
            for y in _tile_starts(image.height, tile):
                for x in _tile_starts(image.width, tile):
                    runs.append((self.full, (x, y, tile)))
        found = [model.detections(image, region, threshold) for model, region in runs]
        return weighted_nms(torch.cat([d for d, _ in found]), torch.cat([s for _, s in found]))

    def _refine(self, image: Image.Image, proposal: torch.Tensor, threshold: float) -> tuple[torch.Tensor, float] | None:
        """The short-range model's best face in a square around the proposal, if its centre lies
        inside the proposal's box."""
        x0, y0, x1, y1 = proposal[:4].tolist()
        side = max(x1 - x0, y1 - y0) * self.REFINE_CONTEXT
        region = ((x0 + x1 - side) / 2, (y0 + y1 - side) / 2, side)
        detections, scores = self.short.detections(image, region, threshold)
        centres = (detections[:, :2] + detections[:, 2:4]) / 2
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        if not inside.any():
            return None
        merged = weighted_nms(detections[inside], scores[inside])
        return merged[0]

    def detect(self, image: Image.Image, threshold: float = SCORE_THRESHOLD) -> list[Face]:
        image = image.convert("RGB")
        refined = [r for p, _ in self._proposals(image, threshold) if (r := self._refine(image, p, threshold))]
        if not refined:
            return []
        # two proposals of one face refine to the same face: merge them
        faces = weighted_nms(torch.stack([d for d, _ in refined]), torch.tensor([s for _, s in refined]))
        return [Face(tuple(d[:4].tolist()), score, five_points(d[4:].double().numpy().reshape(6, 2)))
                for d, score in faces]


def _tile_starts(length: int, tile: float) -> list[float]:
    """Starts of tiles overlapping by half that cover [0, length); the last one flush with the end."""
    if length <= tile:
        return [(length - tile) / 2]
    starts = list(np.arange(0, length - tile, tile / 2)) + [length - tile]
    return [float(v) for v in starts]
