"""RetinaFace (ResNet-50) face detector reading facexlib's weight file, without facexlib.

facexlib itself pulls numba, scipy, filterpy and opencv; this module is the same network in
facexlib's module names, so its `detection_Resnet50_Final.pth` (the detector GFPGAN uses) loads
unchanged with ``torch.load(weights_only=True)``.  Weights come only from the models folder:
``<models_dir>/face_detection/detection_Resnet50_Final.pth``.
"""
from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .faces import Face
from .restoration import read_state_dict

DETECTOR_DIR = "face_detection"
DETECTOR_FILES = {"retinaface_resnet50": "detection_Resnet50_Final.pth"}
DETECTOR_SOURCE = "https://github.com/xinntao/facexlib/releases (detection_Resnet50_Final.pth)"

# facexlib's cfg_re50
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)  # trained on cv2 images: BGR, 0..255, mean-subtracted
SCORE_THRESHOLD = 0.97  # GFPGAN's FaceRestoreHelper setting
MIN_EYE_DISTANCE = 5.0  # pixels


class DetectorMissingError(FileNotFoundError):
    """The detector's weight file is not in the models folder."""


def detector_path(models_dir: str | Path, name: str = "retinaface_resnet50") -> Path:
    return Path(models_dir) / DETECTOR_DIR / DETECTOR_FILES[name]


def find_detector(models_dir: str | Path, name: str = "retinaface_resnet50") -> Path:
    """The detector's weight file; DetectorMissingError says where to put it when it is not there."""
    path = detector_path(models_dir, name)
    if not path.is_file():
        raise DetectorMissingError(
            f"face detector weights not found: {path}. Put facexlib's {path.name} there "
            f"(from {DETECTOR_SOURCE}), or set aligned=true for an already aligned face"
        )
    return path


def _conv_bn(cin: int, cout: int, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))  # facexlib's LeakyReLU(0) for 256 channels
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out, 1)
        self.output2 = _conv_bn(in_channels[1], out, 1)
        self.output3 = _conv_bn(in_channels[2], out, 1)
        self.merge1 = _conv_bn(out, out)
        self.merge2 = _conv_bn(out, out)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half, quarter = channels // 2, channels // 4
        self.conv3X3 = _conv_bn(channels, half, relu=False)
        self.conv5X5_1 = _conv_bn(channels, quarter)
        self.conv5X5_2 = _conv_bn(quarter, quarter, relu=False)
        self.conv7X7_2 = _conv_bn(quarter, quarter)
        self.conv7x7_3 = _conv_bn(quarter, quarter, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), self.conv7x7_3(self.conv7X7_2(branch5))], 1)
        return F.relu(out)


class _Head(nn.Module):
    def __init__(self, channels: int, values: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """facexlib's RetinaFace('resnet50') in eval form: returns (boxes, scores, landmarks) deltas."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3})
        self.fpn = FPN((512, 1024, 2048), 256)
        self.ssh1, self.ssh2, self.ssh3 = SSH(256), SSH(256), SSH(256)
        self.ClassHead = nn.ModuleList(_Head(256, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(256, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(256, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.fpn(list(self.body(x).values()))
        features = [ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), levels)]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], 1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], 1).softmax(-1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], 1)
        return boxes, scores, landmarks


def priors(height: int, width: int) -> torch.Tensor:
    """Anchor boxes (cx, cy, w, h), relative to the image size, in the heads' output order."""
    anchors = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for i, j in itertools.product(range(math.ceil(height / step)), range(math.ceil(width / step))):
            for size in sizes:
                anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height))
    return torch.tensor(anchors, dtype=torch.float32)


def decode(boxes: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor, height: int, width: int,
           threshold: float = SCORE_THRESHOLD, nms_iou: float = 0.4) -> list[Face]:
    """Faces from one image's head outputs (N, 4), (N, 2), (N, 10), as facexlib decodes them."""
    from torchvision.ops import nms

    anchors = priors(height, width)
    centre = anchors[:, :2] + boxes[:, :2] * VARIANCE[0] * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(boxes[:, 2:] * VARIANCE[1])
    corners = torch.cat([centre - size / 2, centre + size / 2], 1) * torch.tensor([width, height, width, height])
    points = anchors[:, None, :2] + landmarks.view(-1, 5, 2) * VARIANCE[0] * anchors[:, None, 2:]
    points = points * torch.tensor([width, height])
    face_scores = scores[:, 1]
    keep = face_scores > threshold
    corners, points, face_scores = corners[keep], points[keep], face_scores[keep]
    order = nms(corners, face_scores, nms_iou)
    return [Face(tuple(corners[k].tolist()), float(face_scores[k]), points[k].numpy().astype(np.float64))
            for k in order.tolist()]


class RetinaFaceDetector:
    """A loaded detector: `detect(image)` returns faces, best score first."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        state_dict = read_state_dict(path, lazy=False)  # weights_only; strips facexlib's "module."
        self.device = torch.device(device)
        with torch.device("meta"):
            self.network = RetinaFace()  # no random initialisation: every tensor comes from the file
        try:
            self.network.load_state_dict(state_dict, assign=True)
        except RuntimeError as exc:
            raise ValueError(f"{path.name}: not a RetinaFace-ResNet50 weight file ({str(exc).splitlines()[0]})") from None
        self.network.to(self.device).eval()

    def detect(self, image: Image.Image, threshold: float = SCORE_THRESHOLD) -> list[Face]:
        bgr = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1] - np.array(BGR_MEAN, dtype=np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            boxes, scores, landmarks = self.network(tensor)
        faces = decode(boxes[0].float().cpu(), scores[0].float().cpu(), landmarks[0].float().cpu(),
                       image.height, image.width, threshold)
        # eyes closer than a few pixels: too small a face to restore (GFPGAN skips them too)
        return [f for f in faces if np.linalg.norm(f.landmarks[0] - f.landmarks[1]) >= MIN_EYE_DISTANCE]


def write_random_detector(path: str | Path, seed: int = 0) -> Path:
    """A random-weight RetinaFace file in facexlib's layout whose class heads find no face anywhere
    (random heads would report faces at random places)."""
    with torch.device("meta"):
        network = RetinaFace()  # skips torchvision's slow ResNet-50 initialisation
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, tensor in network.state_dict().items():
        if name.endswith("running_var") or (name.endswith(".weight") and tensor.dim() == 1):
            state_dict[name] = torch.ones(tensor.shape)  # batch norm: unit scale and variance
        elif tensor.is_floating_point():
            state_dict[name] = torch.randn(tensor.shape, generator=generator) * 0.01
        else:
            state_dict[name] = torch.zeros(tensor.shape, dtype=tensor.dtype)  # num_batches_tracked
    for level in range(3):
        state_dict[f"ClassHead.{level}.conv1x1.weight"].zero_()
        state_dict[f"ClassHead.{level}.conv1x1.bias"] = torch.tensor([0.0, -10.0]).repeat(2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, path)
    return path


_cache: dict[tuple[str, int, str], RetinaFaceDetector] = {}
_cache_lock = threading.Lock()


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> RetinaFaceDetector:
    """The detector for `path`, kept loaded (one at a time) while the file is unchanged."""
    path = Path(path)
    key = (str(path), path.stat().st_mtime_ns, str(device))
    with _cache_lock:
        detector = _cache.get(key)
        if detector is None:
            detector = RetinaFaceDetector(path, device)
            _cache.clear()  # ~100 MB each: keep only the one in use
            _cache[key] = detector
        return detector
