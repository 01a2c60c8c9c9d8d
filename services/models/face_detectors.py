"""Face detectors: RetinaFace weights found in the models folder (read as plain tensors), or the
BlazeFace models shipped in assets/face_detection/; kept loaded one at a time."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

import torch

from nodes.core.blazeface import BlazeFaceDetector
from nodes.core.face_detection import RetinaFace, RetinaFaceDetector
from services.models.restoration_files import read_state_dict

AUTO, RETINAFACE, BLAZEFACE = "auto", "retinaface_resnet50", "blazeface"
DETECTORS = (AUTO, RETINAFACE, BLAZEFACE)  # the names face_restore's `detector` field offers
DETECTOR_DIR = "face_detection"
DETECTOR_FILES = {RETINAFACE: "detection_Resnet50_Final.pth"}
# shipped with the app: Google MediaPipe's BlazeFace models (Apache 2.0), see NOTICE.md there
BLAZEFACE_DIR = Path(__file__).resolve().parents[2] / "assets" / DETECTOR_DIR
BLAZEFACE_FILES = {"short_range": "face_detection_short_range.tflite", "full_range": "face_detection_full_range.tflite"}
DETECTOR_SOURCE = "https://github.com/xinntao/facexlib/releases (detection_Resnet50_Final.pth)"


class DetectorMissingError(FileNotFoundError):
    """The detector's weight file is not in the models folder."""


def detector_path(models_dir: str | Path, name: str = RETINAFACE) -> Path:
    return Path(models_dir) / DETECTOR_DIR / DETECTOR_FILES[name]


def find_detector(models_dir: str | Path, name: str = RETINAFACE) -> Path:
    """The detector's weight file; DetectorMissingError says where to put it when it is not there."""
    path = detector_path(models_dir, name)
    if not path.is_file():
        raise DetectorMissingError(
            f"face detector weights not found: {path}. Put facexlib's {path.name} there "
            f"(from {DETECTOR_SOURCE}), choose detector 'blazeface' (shipped with the app), "
            f"or set aligned=true for an already aligned face"
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


_cache: dict[tuple[str, int, str], Any] = {}
_cache_lock = threading.Lock()


def _cached(path: Path, device: str | torch.device, build: Callable[[], Any]) -> Any:
    """The detector built from `path`, kept loaded (one at a time) while the file is unchanged."""
    key = (str(path), path.stat().st_mtime_ns, str(device))
    with _cache_lock:
        detector = _cache.get(key)
        if detector is None:
            detector = build()
            _cache.clear()  # RetinaFace is ~100 MB: keep only the detector in use
            _cache[key] = detector
        return detector


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> RetinaFaceDetector:
    """The RetinaFace detector of a facexlib weight file (read weights_only; "module." stripped)."""
    path = Path(path)
    return _cached(path, device, lambda: RetinaFaceDetector(read_state_dict(path, lazy=False), path.name, device))


def load_blazeface(device: str | torch.device = "cpu") -> BlazeFaceDetector:
    """BlazeFace short and full range, from the .tflite files shipped in assets/face_detection."""
    from services.models.tflite_graph import read_tflite

    paths = {name: BLAZEFACE_DIR / file for name, file in BLAZEFACE_FILES.items()}
    for path in paths.values():
        if not path.is_file():
            raise DetectorMissingError(f"the shipped BlazeFace model is missing: {path} (reinstall invoke-nodes)")
    return _cached(paths["full_range"], device,
                   lambda: BlazeFaceDetector({name: read_tflite(path) for name, path in paths.items()}, device))


def open_detector(models_dir: str | Path, name: str, device: str | torch.device = "cpu") -> Any:
    """The loaded detector `name` (`detect(image)` -> faces).  auto: RetinaFace when its weights are
    in the models folder (the detector GFPGAN's own pipeline uses), else the shipped BlazeFace."""
    if name not in DETECTORS:
        raise KeyError(f"unknown face detector '{name}' (known: {', '.join(DETECTORS)})")
    if name == AUTO:
        name = RETINAFACE if detector_path(models_dir, RETINAFACE).is_file() else BLAZEFACE
    if name == BLAZEFACE:
        return load_blazeface(device)
    return load_detector(find_detector(models_dir, name), device)
