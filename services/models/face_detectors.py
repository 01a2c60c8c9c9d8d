"""Face detector weights: found in the models folder, read as plain tensors, kept loaded one at a time."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from nodes.core.face_detection import RetinaFace, RetinaFaceDetector
from services.models.restoration_files import read_state_dict

DETECTOR_DIR = "face_detection"
DETECTOR_FILES = {"retinaface_resnet50": "detection_Resnet50_Final.pth"}
DETECTOR_SOURCE = "https://github.com/xinntao/facexlib/releases (detection_Resnet50_Final.pth)"


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
            # weights_only; strips facexlib's "module."
            detector = RetinaFaceDetector(read_state_dict(path, lazy=False), path.name, device)
            _cache.clear()  # ~100 MB each: keep only the one in use
            _cache[key] = detector
        return detector
