"""Reading LoRA and textual-inversion embedding files (the manager scans and caches them; applying
them to a loaded model is inference code, in nodes/core/lora.py and nodes/core/conditioning.py).

LoRA layouts read:
- kohya / sd-scripts (what most shared LoRAs use): `lora_unet_<module>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; text encoders `lora_te_` (SD 1/2), `lora_te1_` / `lora_te2_` (SDXL).
  Module names are diffusers' (SD 1.x) or the original LDM ones (SDXL); LoCon (LyCORIS) convolution
  layers use the same keys.
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (and the older `lora.down` /
  `lora.up`, `lora_linear_layer.down` / `.up`), `text_encoder.` / `text_encoder_2.` for the encoders.
LoHa / LoKr (other LyCORIS algorithms) are refused with a clear message.

Layers are keyed "<component>:<module>" with the module name flattened to underscores, so both
layouts meet the model's modules the same way (nodes.core.lora matches them).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from services.models.checkpoints import load_pickle_state_dict

LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")
EMBEDDINGS_FOLDER = "embeddings"
_KOHYA = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder"))
_DIFFUSERS = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"))
# (down suffix, up suffix) of each layout
_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
          (".lora.down.weight", ".lora.up.weight"), (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"))
_UNSUPPORTED = ((".hada_w1_a", "LoHa"), (".lokr_w1", "LoKr"), (".lora_mid.weight", "LoCon with a CP decomposition"))


def is_lora(keys: Any) -> bool:
    return any(key.endswith(suffix) for key in keys for pair in _PAIRS for suffix in pair) or \
        any(marker in key for key in keys for marker, _ in _UNSUPPORTED)


def lora_base(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The model family from a cross-attention key projection's input width (None: unknown width)."""
    from services.models.checkpoints import BASE_BY_CONTEXT_DIM

    for key, shape in shapes.items():
        if "attn2" in key and ("to_k" in key) and (key.endswith("lora_down.weight") or key.endswith("lora_A.weight")
                                                   or key.endswith("lora.down.weight")):
            return BASE_BY_CONTEXT_DIM.get(shape[-1])
    return None


@dataclass
class LoRALayer:
    down: Any  # [rank, in] or [rank, in, kh, kw]
    up: Any  # [out, rank] or [out, rank, 1, 1]
    alpha: float | None  # scale is alpha / rank; None: scale 1 (diffusers/PEFT files without alphas)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.down.shape[0]

    def delta(self) -> Any:
        """up @ down · scale, as a float32 matrix (the caller reshapes it to the layer's weight)."""
        return (self.up.flatten(1).float() @ self.down.flatten(1).float()) * self.scale


class LoRAWeights:
    """A LoRA file's layers; moved between RAM and GPU by the model cache like a model."""

    def __init__(self, layers: dict[str, LoRALayer]) -> None:
        self.layers = layers

    def to(self, device: Any) -> "LoRAWeights":
        for layer in self.layers.values():
            layer.down, layer.up = layer.down.to(device), layer.up.to(device)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers.values() for t in (layer.down, layer.up))


def read_state_dict(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors (and safetensors metadata) of a file: safetensors, or a pickle read with weights_only."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    return load_pickle_state_dict(path, mmap=False), {}


def _split(key: str) -> tuple[str, str] | None:
    """(component, module prefix) of a LoRA key, or None when it is no LoRA layer key."""
    for prefix, component in _KOHYA:
        if key.startswith(prefix):
            return component, key[len(prefix):]
    for prefix, component in _DIFFUSERS:
        if key.startswith(prefix):
            return component, key[len(prefix):]
    return None


def _flat(module: str) -> str:
    # old diffusers attention-processor names: "attn1.processor.to_q_lora" is attn1.to_q
    module = re.sub(r"\.processor\.(to_[qkv]|to_out)_lora$", r".\1", module)
    module = re.sub(r"\.to_out$", ".to_out.0", module)  # that layout names the output projection without its index
    return module.replace(".", "_")


def read_lora(path: Path) -> LoRAWeights:
    state, metadata = read_state_dict(path)
    for key in state:
        for marker, name in _UNSUPPORTED:
            if marker in key:
                raise ValueError(f"{path.name} is a {name} (LyCORIS) file, which is not supported; LoRA and LoCon are")
    alpha_override = _peft_alpha(metadata)
    layers: dict[str, LoRALayer] = {}
    for key, down in state.items():
        for down_suffix, up_suffix in _PAIRS:
            if not key.endswith(down_suffix):
                continue
            stem = key[: -len(down_suffix)]
            split = _split(stem)
            up = state.get(stem + up_suffix)
            if split is None or up is None:
                raise ValueError(f"{path.name}: LoRA tensor '{key}' has no matching up tensor or an unknown prefix")
            alpha = state.get(stem + ".alpha")
            component, module = split
            layers[f"{component}:{_flat(module)}"] = LoRALayer(
                down, up, float(alpha) if alpha is not None else alpha_override)
            break
    if not layers:
        raise ValueError(f"{path.name} holds no LoRA layers (kohya lora_down/lora_up or PEFT lora_A/lora_B)")
    return LoRAWeights(layers)


def _peft_alpha(metadata: Mapping[str, str]) -> float | None:
    """diffusers writes its PEFT adapter config (lora_alpha) into the safetensors metadata."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        config = json.loads(raw)
        config = next(iter(config.values())) if "lora_alpha" not in config and config else config
        return float(config["lora_alpha"])
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Textual-inversion embeddings


class Embedding:
    """An embedding's vectors per text encoder: {"clip_l": [n, d], "clip_g": [n, d]} for SDXL files,
    {"*": [n, d]} for SD 1.x/2.x ones."""

    def __init__(self, vectors: dict[str, Any]) -> None:
        self.vectors = vectors

    def to(self, device: Any) -> "Embedding":
        self.vectors = {k: v.to(device) for k, v in self.vectors.items()}
        return self

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.vectors.values())

    def for_encoder(self, name: str) -> Any:
        """The vectors for a text encoder ("*": SD 1.x/2.x's one, "clip_l" / "clip_g": SDXL's); KeyError if none."""
        if name == "*" and "*" not in self.vectors:
            return self.vectors["clip_l"]  # an SDXL file's CLIP-L part is SD 1.x's encoder
        return self.vectors[name]


def read_embedding(path: Path) -> Embedding:
    """An A1111 .pt, a diffusers .bin (one token) or a .safetensors (emb_params, or SDXL's clip_l + clip_g)."""
    state, _ = read_state_dict(path)
    if "clip_l" in state and "clip_g" in state:
        return Embedding({"clip_l": state["clip_l"].float(), "clip_g": state["clip_g"].float()})
    if "string_to_param" in state:  # A1111's .pt: {"string_to_param": {"*": tensor}}
        params = state["string_to_param"]
        vectors = next(iter(params.values())) if isinstance(params, Mapping) and params else None
    elif "emb_params" in state:
        vectors = state["emb_params"]
    elif len(state) == 1:  # diffusers' learned_embeds.bin: {"<token>": tensor[d]}
        vectors = next(iter(state.values()))
    else:
        vectors = None
    if vectors is None or not hasattr(vectors, "ndim") or vectors.ndim not in (1, 2):
        raise ValueError(f"{path.name} is not a textual-inversion embedding (keys: {', '.join(list(state)[:5])})")
    return Embedding({"*": vectors.reshape(-1, vectors.shape[-1]).float()})
