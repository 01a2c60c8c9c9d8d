"""RetinaFace (ResNet-50) face detector reading facexlib's weight file, without facexlib.

facexlib itself pulls numba, scipy, filterpy and opencv; this module is the same network in
facexlib's module names, so its `detection_Resnet50_Final.pth` (the detector GFPGAN uses) loads
unchanged.  The model manager finds and reads the file (services/models/face_detectors.py).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from nodes.core.faces import Face

# facexlib's cfg_re50
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)  # trained on cv2 images: BGR, 0..255, mean-subtracted
SCORE_THRESHOLD = 0.97  # GFPGAN's FaceRestoreHelper setting
MIN_EYE_DISTANCE = 5.0  # pixels


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

    def __init__(self, state_dict: dict[str, torch.Tensor], name: str, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        with torch.device("meta"):
            self.network = RetinaFace()  # no random initialisation: every tensor comes from the file
        try:
            self.network.load_state_dict(state_dict, assign=True)
        except RuntimeError as exc:
            raise ValueError(f"{name}: not a RetinaFace-ResNet50 weight file ({str(exc).splitlines()[0]})") from None
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
