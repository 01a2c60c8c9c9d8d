"""Preprocessor weights in <models>/preprocessors/: which file each preprocessor reads (the names
lllyasviel/Annotators on Hugging Face gives them), recognising a file by its tensors, loading it.

Importing this module does not import torch (the scanner uses it); loading does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

PREPROCESSORS_FOLDER = "preprocessors"
ANNOTATORS = "https://huggingface.co/lllyasviel/Annotators"


@dataclass(frozen=True)
class PreprocessorFile:
    title: str
    file: str  # the file name users download
    keys: tuple[str, ...]  # tensors that identify the architecture
    runnable: bool  # False: recognised, but this version has no implementation to run it


PREPROCESSOR_FILES = {
    "hed": PreprocessorFile("HED", "ControlNetHED.pth", ("norm", "block1.convs.0.weight", "block5.projection.weight"), True),
    "lineart": PreprocessorFile("lineart", "sk_model.pth", ("model0.1.weight", "model2.0.conv_block.1.weight"), True),
    "lineart_coarse": PreprocessorFile("coarse lineart", "sk_model2.pth",
                                       ("model0.1.weight", "model2.0.conv_block.1.weight"), True),
    "depth": PreprocessorFile("depth (MiDaS)", "dpt_hybrid-midas-501f0c75.pt", ("pretrained.model.cls_token",), False),
    "openpose": PreprocessorFile("OpenPose body", "body_pose_model.pth", ("conv1_1.weight", "Mconv7_stage6_L1.weight"), False),
}


def missing_message(architecture: str, folder: Path) -> str:
    spec = PREPROCESSOR_FILES[architecture]
    return (f"{spec.title} weights not found: put {spec.file} (from {ANNOTATORS}) at "
            f"{folder / PREPROCESSORS_FOLDER / spec.file}")


def architecture_of(path: Path, keys: Mapping[str, Any]) -> str:
    """Which preprocessor a file in the preprocessors folder holds (ValueError naming the known files)."""
    for architecture, spec in PREPROCESSOR_FILES.items():
        if all(key in keys for key in spec.keys):
            if architecture.startswith("lineart"):  # one architecture, two trainings: the file name says which
                return "lineart_coarse" if path.stem == "sk_model2" else "lineart"
            return architecture
    known = ", ".join(spec.file for spec in PREPROCESSOR_FILES.values())
    raise ValueError(f"not a preprocessor file this app knows (known: {known})")


def load_preprocessor(path: Path, architecture: str) -> Any:
    """The network of a preprocessor file, in float32 on the CPU (weights read with weights_only)."""
    import torch

    from nodes.core.annotators import HED, Lineart
    from services.models.checkpoints import SAFETENSORS_SUFFIXES, load_pickle_state_dict

    spec = PREPROCESSOR_FILES[architecture]
    if not spec.runnable:
        raise ValueError(f"{spec.title} is recognised but this version cannot run it yet")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_pickle_state_dict(path, mmap=False)
    net = HED() if architecture == "hed" else Lineart()
    net.load_state_dict({k.removeprefix("module."): v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False).to(torch.float32)


def write_random_preprocessor(path: Path | str, architecture: str, seed: int = 0) -> Path:
    """A random-weight file in the real layout (for tests and demo models)."""
    import torch

    from nodes.core.annotators import HED, Lineart

    torch.manual_seed(seed)
    net = HED() if architecture == "hed" else Lineart()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if architecture == "hed" else v for k, v in net.state_dict().items()}, path)  # HED ships in fp16
    return path
