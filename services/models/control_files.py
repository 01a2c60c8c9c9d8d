"""ControlNet, T2I-Adapter, IP-Adapter and CLIP vision files: recognising them (torch-free) and
loading them (torch imported inside the loaders).

Layouts read:
- ControlNet: diffusers folders (config.json `_class_name: ControlNetModel`), single files in the
  original layout (`control_model.*`, as lllyasviel's and most shared files) or in the diffusers one.
  A single file gets the config of its base's UNet (SD 1.x, 2.x, SDXL full size); other sizes
  (SDXL "mid"/"small", tiny test models) need a `<file stem>.config/config.json` beside them.
- T2I-Adapter: diffusers folders (`_class_name: T2IAdapter`), diffusers-layout single files
  (`adapter.*`) and TencentARC's original files (`conv_in` + `body.N.block1`); the config is read
  from the tensor shapes (full adapters; light adapters need a diffusers folder).
- IP-Adapter: h94/IP-Adapter's files (`image_proj.*` + `ip_adapter.*`; a .bin nests them as two dicts).
- CLIP vision: transformers folders (config.json naming CLIPVisionModelWithProjection).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from services.models.checkpoints import BASE_BY_CONTEXT_DIM

CONTROL_KINDS = ("controlnet", "t2i_adapter", "ip_adapter", "clip_vision")
CONTROLNET_PREFIX = "control_model."
_FOLDER_CLASSES = {"ControlNetModel": "controlnet", "T2IAdapter": "t2i_adapter",
                   "CLIPVisionModelWithProjection": "clip_vision"}


def folder_kind(config: Mapping[str, Any]) -> str | None:
    """The kind of a component folder from its config.json (diffusers `_class_name`, transformers `architectures`)."""
    names = [config.get("_class_name"), *(config.get("architectures") or [])]
    return next((_FOLDER_CLASSES[n] for n in names if n in _FOLDER_CLASSES), None)


def folder_base(kind: str, config: Mapping[str, Any]) -> str | None:
    if kind == "controlnet":
        return _base(config.get("cross_attention_dim"), config.get("addition_embed_type") == "text_time")
    if kind == "t2i_adapter":
        return "sdxl" if config.get("adapter_type") == "full_adapter_xl" else "sd1"
    return None  # a CLIP vision encoder serves every base


def _base(context_dim: Any, sdxl_embedding: bool) -> str:
    """Known widths name the family; small (test) models: SDXL when they embed SDXL's size conditioning."""
    return BASE_BY_CONTEXT_DIM.get(context_dim) or ("sdxl" if sdxl_embedding else "sd1")


def classify_control_file(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str | None, str] | None:
    """(kind, base, variant) of a single file, None when it is none of these.  Raises ValueError for
    a variant this app cannot run."""
    keys = shapes.keys()
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        # the image projection's layout names the variant, checked in diffusers' order
        if "image_proj.proj.weight" in shapes:
            variant = "normal"
        elif "image_proj.proj.3.weight" in shapes:
            variant = "full"
        elif "image_proj.latents" in shapes:
            variant = "plus"
        else:
            raise ValueError("an IP-Adapter FaceID file (it needs insightface face embeddings), which is not supported")
        context = shapes.get("ip_adapter.1.to_k_ip.weight")
        return "ip_adapter", BASE_BY_CONTEXT_DIM.get(context[1]) if context else None, variant
    controlnet = {k[len(CONTROLNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(CONTROLNET_PREFIX)}
    if controlnet or "controlnet_cond_embedding.conv_in.weight" in shapes:
        layout = controlnet or shapes
        widths = {s[1] for k, s in layout.items() if k.endswith("attn2.to_k.weight") and len(s) == 2}
        sdxl = any(k.startswith(("label_emb.", "add_embedding.")) for k in layout)
        return "controlnet", _base(widths.pop() if len(widths) == 1 else None, sdxl), "normal"
    if "adapter.conv_in.weight" in shapes or ("conv_in.weight" in shapes and "body.0.block1.weight" in shapes):
        config = t2i_config(shapes)
        return "t2i_adapter", folder_base("t2i_adapter", config), "normal"
    return None


# --------------------------------------------------------------------------------------------
# T2I-Adapter: config from shapes, original -> diffusers names


def t2i_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The T2IAdapter config of a full adapter file (either layout) from its tensor shapes."""
    if "conv_in.weight" in shapes:
        shapes = original_t2i_names(shapes)
    if any(".out_conv." in k for k in shapes):
        raise ValueError("a light T2I-Adapter; only full adapters are read from single files (use its diffusers folder)")
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"adapter\.body\.(\d+)\.", k))})
    resnets = {int(m.group(1)) for k in shapes if (m := re.match(r"adapter\.body\.0\.resnets\.(\d+)\.", k))}
    if not blocks or not resnets:
        raise ValueError("a T2I-Adapter file without adapter blocks")
    channels = [shapes[f"adapter.body.{i}.resnets.0.block1.weight"][0] for i in blocks]
    unshuffled = shapes["adapter.conv_in.weight"][1]
    xl = unshuffled in (256, 768)  # SDXL adapters unshuffle 16x16 pixels (of 1 or 3 channels), SD 1.x ones 8x8
    factor = 16 if xl else 8
    return {"_class_name": "T2IAdapter", "in_channels": unshuffled // factor**2, "channels": channels,
            "num_res_blocks": len(resnets), "downscale_factor": factor,
            "adapter_type": "full_adapter_xl" if xl else "full_adapter"}


_ORIGINAL_T2I_LEVELS = 4  # TencentARC's adapters: 320, 640, 1280, 1280 channels, `body` one flat list over them


def original_t2i_names(state: Mapping[str, Any]) -> dict[str, Any]:
    """TencentARC's Adapter keys (body.<level * blocks + block>) under diffusers' T2IAdapter names."""
    count = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))), default=0)
    per_level = max(1, count // _ORIGINAL_T2I_LEVELS)
    out = {}
    for key, value in state.items():
        m = re.match(r"body\.(\d+)\.(in_conv|block1|block2)\.(weight|bias)$", key)
        if m:
            level, block = divmod(int(m.group(1)), per_level)
            part, param = m.group(2), m.group(3)
            out[f"adapter.body.{level}.in_conv.{param}" if part == "in_conv" else
                f"adapter.body.{level}.resnets.{block}.{part}.{param}"] = value
        else:
            out["adapter." + key] = value
    return out


# --------------------------------------------------------------------------------------------
# Loading (torch inside)


def _write_config(folder: Path, config: Mapping[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "config.json"
    text = json.dumps(dict(config), indent=2)
    if not target.is_file() or target.read_text("utf-8") != text:
        target.write_text(text, "utf-8")
    return str(folder)


def controlnet_config_folder(base: str, cache_dir: Path) -> str:
    """A ControlNet config for a base: its shipped UNet config (a ControlNet copies the UNet's encoder half)."""
    from services.models.configs import ASSETS, BASES

    if base not in BASES:
        raise ValueError(f"no ControlNet config for base '{base}'")
    unet = json.loads((ASSETS / base / "unet" / "config.json").read_text("utf-8"))
    keep = {k: v for k, v in unet.items() if k not in ("out_channels", "up_block_types", "sample_size", "center_input_sample")}
    return _write_config(cache_dir / "model_configs" / f"controlnet-{base}", {**keep, "_class_name": "ControlNetModel"})


def load_controlnet(info: Any, dtype: Any, cache_dir: Path, dtype_args: dict[str, Any]) -> Any:
    from diffusers import ControlNetModel

    path = Path(info.path)
    if info.format == "diffusers":
        return ControlNetModel.from_pretrained(path, **dtype_args, local_files_only=True)
    config = info.config_path or controlnet_config_folder(info.base, cache_dir)
    try:
        return ControlNetModel.from_single_file(str(path), config=str(config), **dtype_args, local_files_only=True)
    except (RuntimeError, ValueError) as exc:
        if info.config_path or "size mismatch" not in str(exc) and "shape" not in str(exc):
            raise
        raise ValueError(f"its layers do not fit a full-size {info.base} ControlNet (a smaller variant?): put its "
                         f"diffusers config.json in '{path.stem}.config/' beside it") from None


def load_t2i_adapter(info: Any, dtype: Any, dtype_args: dict[str, Any]) -> Any:
    from diffusers import T2IAdapter

    from services.models.adapters import read_state_dict

    path = Path(info.path)
    if info.format == "diffusers":
        return T2IAdapter.from_pretrained(path, **dtype_args, local_files_only=True)
    state, _ = read_state_dict(path)
    if "conv_in.weight" in state:
        state = original_t2i_names(state)
    if info.config_path:
        config = json.loads((Path(info.config_path) / "config.json").read_text("utf-8"))
    else:
        config = t2i_config({k: tuple(v.shape) for k, v in state.items()})
    adapter = T2IAdapter.from_config(config)
    adapter.load_state_dict(state, strict=True)
    return adapter.to(dtype).eval()


class IPAdapterWeights:
    """An IP-Adapter file's two parts: `image_proj` (CLIP image embedding -> tokens) and
    `ip_adapter` (the extra key/value projections of each cross-attention layer); moved by the cache."""

    def __init__(self, state: dict[str, dict[str, Any]], variant: str) -> None:
        self.state = state
        self.variant = variant  # normal | plus | full: plus and full read CLIP's penultimate hidden states

    @property
    def image_width(self) -> int:
        """The CLIP vision width it reads: the projection's input (normal) or the hidden size (plus, full)."""
        proj = self.state["image_proj"]
        if self.variant == "plus":
            return int(proj["proj_in.weight"].shape[1])
        if self.variant == "full":
            return int(proj["proj.0.weight"].shape[1])
        return int(proj["proj.weight"].shape[1])

    def to(self, device: Any) -> "IPAdapterWeights":
        self.state = {part: {k: v.to(device) for k, v in tensors.items()} for part, tensors in self.state.items()}
        return self

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for tensors in self.state.values() for v in tensors.values())


def read_ip_adapter(info: Any, dtype: Any) -> IPAdapterWeights:
    from services.models.adapters import read_state_dict

    flat, _ = read_state_dict(Path(info.path))
    state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        if isinstance(value, Mapping):  # a .bin: {"image_proj": {...}, "ip_adapter": {...}}
            state.setdefault(key, {}).update({k: v.to(dtype) for k, v in value.items()})
            continue
        part, _, name = key.partition(".")
        if part in state:
            state[part][name] = value.to(dtype)
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ValueError("not an IP-Adapter file (no image_proj / ip_adapter tensors)")
    return IPAdapterWeights(state, info.variant)


def load_clip_vision(info: Any, dtype: Any) -> Any:
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection.from_pretrained(info.path, dtype=dtype, local_files_only=True).eval()
