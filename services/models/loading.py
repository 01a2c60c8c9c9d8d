"""Loading model files into memory (the model manager calls these; torch imported here)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never let diffusers/transformers reach a hub

import torch  # noqa: E402

from services.models.checkpoints import load_pickle_state_dict, vae_base_from_name  # noqa: E402
from services.models.configs import config_folder  # noqa: E402
from services.models.control_files import CONTROL_KINDS  # noqa: E402


def _quiet_libraries() -> None:
    """No per-component progress bars on the console: loading is reported by the app."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def import_for_generation(compile_mode: str) -> None:
    """Import what a first generation needs besides its model: diffusers' pipelines and the denoise
    loop, and torch's dynamo when the denoiser is compiled (seconds each, on a cold disk more)."""
    import nodes.core.diffusion  # noqa: F401

    pipeline_class("sd1")
    if compile_mode not in ("off", "graphs"):
        import torch._dynamo  # noqa: F401


def import_for_compiling(compile_mode: str) -> None:
    """Import what the background build of a compiled denoiser needs (after `import_for_generation`)."""
    if compile_mode not in ("off", "graphs"):
        from nodes.core.compiled import import_compiler

        import_compiler()


def pipeline_class(base: str, variant: str = "normal") -> type:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    if variant == "refiner":  # diffusers ships the refiner as an img2img pipeline (no first text encoder)
        return StableDiffusionXLImg2ImgPipeline
    return StableDiffusionXLPipeline if base == "sdxl" else StableDiffusionPipeline


def load_from_disk(info: Any, dtype_name: str, cache_dir: Path, device: str = "cpu") -> Any:
    """Read one model (a ModelInfo) from disk: a diffusers pipeline, an AutoencoderKL or a spandrel descriptor.

    Pipelines and VAEs are read onto the CPU (the cache moves them); restoration models go straight
    to `device`, where their loader picks the precision the architecture supports there.
    """
    dtype = getattr(torch, dtype_name)
    path = Path(info.path)
    if info.kind in ("lora", "embedding"):
        from services.models.adapters import read_embedding, read_lora

        return read_lora(path) if info.kind == "lora" else read_embedding(path)  # on the CPU; the cache moves them
    if info.kind == "preprocessor":
        from services.models.preprocessor_files import load_preprocessor

        return load_preprocessor(path, info.architecture)  # float32 on the CPU; the cache moves it
    if info.kind in ("upscaler", "face_restore"):
        from services.models.restoration_files import load_restoration_model

        return load_restoration_model(path, device, dtype)
    _quiet_libraries()  # after the restoration branch: those models need no diffusers
    if info.format in ("ckpt", "pth"):
        # checked here with weights_only (memory-mapped, so cheap): diffusers would hide the reason
        load_pickle_state_dict(path)
    if info.kind == "vae":
        return _load_vae(info, path, dtype, cache_dir)
    if info.kind == "main":
        return _load_pipeline(info, path, dtype, cache_dir)
    if info.kind in CONTROL_KINDS:
        return _load_control(info, dtype, cache_dir)
    raise ValueError(f"model '{info.id}' has kind '{info.kind}', which cannot be loaded")


def _dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed `torch_dtype` to `dtype` and warns (a FutureWarning on every load) about the
    old name; older releases know only the old one."""
    import diffusers.utils

    return {"dtype": dtype} if hasattr(diffusers.utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _load_pipeline(info: Any, path: Path, dtype: torch.dtype, cache_dir: Path) -> Any:
    cls = pipeline_class(info.base, info.variant)
    extra = {} if info.base == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    if info.format == "diffusers":
        pipe = cls.from_pretrained(path, **_dtype(dtype), local_files_only=True, **extra)
    else:
        config = info.config_path or config_folder(info.base, cache_dir / "model_configs")
        pipe = cls.from_single_file(str(path), config=str(config), **_dtype(dtype), local_files_only=True, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_vae(info: Any, path: Path, dtype: torch.dtype, cache_dir: Path) -> Any:
    from diffusers import AutoencoderKL

    if info.format == "diffusers":
        return AutoencoderKL.from_pretrained(path, **_dtype(dtype), local_files_only=True)
    if info.config_path:  # a sidecar holding the VAE's own config.json
        return AutoencoderKL.from_single_file(str(path), config=info.config_path, **_dtype(dtype), local_files_only=True)
    config = config_folder(vae_base_from_name(path), cache_dir / "model_configs")  # its latent scale
    return AutoencoderKL.from_single_file(str(path), config=str(config), subfolder="vae", **_dtype(dtype),
                                          local_files_only=True)


def _load_control(info: Any, dtype: torch.dtype, cache_dir: Path) -> Any:
    from services.models import control_files

    if info.kind == "controlnet":
        return control_files.load_controlnet(info, dtype, cache_dir, _dtype(dtype))
    if info.kind == "t2i_adapter":
        return control_files.load_t2i_adapter(info, dtype, _dtype(dtype))
    if info.kind == "ip_adapter":
        return control_files.read_ip_adapter(info, dtype)
    return control_files.load_clip_vision(info, dtype)


def _modules(model: Any) -> list[torch.nn.Module]:
    if hasattr(model, "components"):  # a diffusers pipeline
        return [m for m in model.components.values() if isinstance(m, torch.nn.Module)]
    inner = getattr(model, "model", None)  # a spandrel descriptor
    if isinstance(inner, torch.nn.Module):
        return [inner]
    return [model] if isinstance(model, torch.nn.Module) else []


def model_bytes(model: Any) -> int:
    if hasattr(model, "nbytes"):  # LoRA weights, embeddings
        return int(model.nbytes())
    return sum(t.numel() * t.element_size() for m in _modules(model) for t in (*m.parameters(), *m.buffers()))


def move_model(model: Any, device: str) -> Any:
    moved = model.to(device)
    if device == "cpu" and torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand freed blocks back so the budget is real memory
    return moved if moved is not None else model
