"""Upscaler and face-restoration model files, read through spandrel.

spandrel recognises the architecture (Real-ESRGAN/ESRGAN, SwinIR, HAT, GFPGAN, RestoreFormer, ...)
from the tensor names and shapes alone, so a file needs no side config.  Files are always read
as plain tensors: `.pth` through ``torch.load(weights_only=True)``, so a file that needs pickled
code is refused and that code never runs.

The tiny builders write random-weight models in the original projects' key layouts; tests and
``invoke-nodes make-demo-models`` use them so every node can run without downloads.
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

UPSCALER = "upscaler"
FACE_RESTORE = "face_restore"

# Face restorers work on aligned 512x512 faces; every other image-to-image model is run tiled.
FACE_ARCHITECTURES = frozenset({"GFPGAN", "RestoreFormer", "CodeFormer"})
MASKED_ARCHITECTURES = frozenset({"LaMa", "MAT"})  # inpainting models: a different node family

PTH_SUFFIXES = frozenset({".pth", ".pt", ".ckpt", ".bin"})
SAFETENSORS_SUFFIX = ".safetensors"


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | Path, *, lazy: bool) -> dict[str, Any]:
    """The file's tensors, never executing pickled code.  lazy: memory-map (for probing)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for broken headers
            raise ValueError(f"{path.name}: not a readable safetensors file ({exc})") from None
    elif suffix in PTH_SUFFIXES:
        data = _torch_load(path, lazy=lazy)
    else:
        raise ValueError(f"{path.name}: unsupported file type '{suffix}' (use .pth or .safetensors)")
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: holds a {type(data).__name__}, not a dict of tensors")
    from spandrel import canonicalize_state_dict

    return canonicalize_state_dict(data)  # unwraps params_ema / state_dict, strips module.


def _torch_load(path: Path, *, lazy: bool) -> Any:
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
        except RuntimeError as exc:
            if not lazy or "mmap" not in str(exc):
                raise
            # files in the pre-zip format cannot be memory-mapped; read them whole
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch wraps both cases in the same boilerplate; the line naming a GLOBAL tells code apart
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        code = next((line for line in lines if "GLOBAL" in line), None)
        if code is None:
            detail = next((line for line in lines if "rror" in line and "Weights only" not in line), lines[-1])
            raise ValueError(f"{path.name}: not a readable PyTorch file ({detail})") from None
        raise ValueError(
            f"{path.name}: refused, the file needs pickled code to load and only plain tensors are read "
            f"(nothing in it was run). Use a .safetensors version of this model. Detail: {code}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{path.name}: not a readable PyTorch file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first line (two where the first is a heading), at most 300 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= 300 else text[:297] + "..."  # load_state_dict lists every key


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    """spandrel's architectures, plus the non-commercial extras when the user installed them."""
    from spandrel import MAIN_REGISTRY

    try:
        # opt-in: `pip install invoke-nodes[noncommercial]` (CodeFormer etc., non-commercial licences)
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        return MAIN_REGISTRY
    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def _detect(state_dict: dict[str, Any], name: str) -> Any:
    """The first architecture whose detector accepts the tensors (spandrel's own order)."""
    for support in _registry().architectures("detection"):
        try:
            if support.detect(state_dict):
                return support.architecture
        except (KeyError, AttributeError, IndexError, TypeError, ValueError):
            continue  # a detector that trips over foreign tensors simply does not match
    raise ValueError(
        f"{name}: not a model spandrel recognises (no upscaler or face-restoration architecture "
        f"matches its {len(state_dict)} tensors)"
    )


def _kind_of(architecture: Any, name: str) -> str:
    if architecture.id in FACE_ARCHITECTURES:
        return FACE_RESTORE
    if architecture.id in MASKED_ARCHITECTURES:
        raise ValueError(f"{name}: an inpainting model ({architecture.name}), not an upscaler or face restorer")
    return UPSCALER


def probe_restoration_file(path: str | Path) -> tuple[str, str]:
    """(kind, architecture) of a restoration model file: kind is "upscaler" or "face_restore".

    Raises ValueError with the reason when the file is not one (unknown layout, pickled code, ...).
    Only detects: no network is built, and .pth files are memory-mapped, so scanning stays cheap.
    """
    path = Path(path)
    architecture = _detect(read_state_dict(path, lazy=True), path.name)
    return _kind_of(architecture, path.name), str(architecture.id)


def load_restoration_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Any:
    """Load a file into a spandrel ImageModelDescriptor in eval mode on `device`.

    dtype None: fp16 on CUDA where the architecture supports it (else bf16, else fp32), fp32 on CPU.
    A requested dtype the architecture cannot run in falls back in the same order (fp16 > bf16 > fp32).
    """
    from spandrel import ImageModelDescriptor

    path = Path(path)
    state_dict = read_state_dict(path, lazy=False)
    architecture = _detect(state_dict, path.name)
    _kind_of(architecture, path.name)  # refuses inpainting models before building them
    try:
        descriptor = architecture.load(state_dict)
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        raise ValueError(
            f"{path.name}: looks like {architecture.name} but its tensors do not fit that network "
            f"({_first_line(exc)})"
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise ValueError(f"{path.name}: {architecture.name} is not an image-to-image model")
    device = torch.device(device)
    descriptor.to(device, _pick_dtype(descriptor, device, dtype)).eval()
    return descriptor


def _pick_dtype(descriptor: Any, device: torch.device, wanted: torch.dtype | None) -> torch.dtype:
    if wanted is None:
        # fp32 on the CPU, where half precision is slow and some kernels lack it.  A dtype passed
        # explicitly is kept on any device: the model manager loads on the CPU, then moves to the GPU.
        wanted = torch.float16 if device.type == "cuda" else torch.float32
    supported = [torch.float32]
    if descriptor.supports_bfloat16:
        supported.insert(0, torch.bfloat16)
    if descriptor.supports_half:
        supported.insert(0, torch.float16)
    return wanted if wanted in supported else supported[0]


# --------------------------------------------------------------------------------------------
# Tiny random-weight models in the original layouts


def _save(state_dict: dict[str, torch.Tensor], path: Path, wrap_key: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save({wrap_key: state_dict} if wrap_key else state_dict, path)
    return path


def _real_esrgan_shapes(scale: int, num_feat: int, num_blocks: int, grow: int = 32) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of basicsr's RRDBNet (Real-ESRGAN's network); x2/x1 read pixel-unshuffled input."""
    in_ch = 3 * {4: 1, 2: 4, 1: 16}[scale]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, 3, 3)
        shapes[f"{name}.bias"] = (cout,)

    conv("conv_first", in_ch, num_feat)
    for b in range(num_blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{c}", num_feat + (c - 1) * grow, num_feat if c == 5 else grow)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, num_feat, num_feat)
    conv("conv_last", num_feat, 3)
    return shapes


def write_tiny_upscaler(path: str | Path, scale: int = 4, num_feat: int = 8, num_blocks: int = 1, seed: int = 0) -> Path:
    """A random-weight Real-ESRGAN (RRDBNet) file, saved like the official releases ({"params_ema": ...}).

    He-scaled weights and a last bias of 0.5 make outputs vary around mid-grey instead of clamping.
    """
    if scale not in (1, 2, 4):
        raise ValueError(f"Real-ESRGAN scales are 1, 2 or 4, not {scale}")
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for name, shape in _real_esrgan_shapes(scale, num_feat, num_blocks).items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        state_dict[name] = torch.randn(shape, generator=generator) * (0.9 / fan_in**0.5 if len(shape) > 1 else 0.01)
    state_dict["conv_last.bias"] = torch.full((3,), 0.5)
    return _save(state_dict, Path(path), wrap_key="params_ema")


def write_tiny_face_restorer(path: str | Path, seed: int = 0) -> Path:
    """A random-weight RestoreFormer file (GFPGAN's RestoreFormer layout) small enough for tests.

    RestoreFormer rather than GFPGAN: spandrel reads RestoreFormer's sizes from its tensors, while
    it builds GFPGAN at the full release size (~350 MB).  Six levels of 32 channels bring a 512
    face down to 16x16, where the attention blocks sit (resolution and attention are fixed).
    """
    from spandrel.architectures.RestoreFormer import RestoreFormer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = RestoreFormer(n_embed=32, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                                z_channels=32, head_size=8)
    return _save(network.state_dict(), Path(path), wrap_key=None)
