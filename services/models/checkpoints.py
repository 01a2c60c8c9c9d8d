"""Reading model files: tensor shapes without loading, safe state-dict loading, SD checkpoint
classification, and the diffusers -> original (LDM) key layout used to write single files.

Shapes of a .safetensors file come from its JSON header (no torch).  .ckpt/.pth files are read
with `torch.load(weights_only=True)`: a file that needs pickled code is refused, never run.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "cond_stage_model.transformer."
# cross_attention_dim of the UNet -> base model
BASE_BY_CONTEXT_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_ENCODER_PREFIXES = (("conditioner.embedders.", "sdxl"), ("cond_stage_model.model.", "sd2"), (CLIP_L_PREFIX, "sd1"))


class UnsafeCheckpointError(ValueError):
    """A pickle checkpoint that needs code (not just tensors) to load: refused."""


def read_safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes from the JSON header, checked against the file: a header that lies (missing shapes,
    data past the end of the file) is refused with the reason, never trusted by the loader."""
    from nodes.core.untrusted import UntrustedInputError, load_json

    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError("file is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > 100_000_000:
            raise ValueError("not a safetensors file (header length is implausible)")
        raw = handle.read(length)
    if len(raw) != length:
        raise ValueError(f"not a safetensors file (the header claims {length} bytes, the file holds {len(raw)})")
    try:
        header = load_json(raw)
    except UntrustedInputError as exc:
        raise ValueError(f"not a safetensors file (header: {exc})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a JSON object)")
    data_size = path.stat().st_size - 8 - length
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise ValueError(f"broken safetensors header: tensor '{name[:80]}' has no valid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise ValueError(f"broken safetensors header: tensor '{name[:80]}' points outside the file "
                             f"(offsets {str(offsets)[:40]}, {data_size} data bytes)")
        shapes[name] = tuple(shape)
    return shapes


def load_pickle_state_dict(path: Path, mmap: bool = True) -> dict[str, Any]:
    """torch.load with weights_only=True; pickled code gets a clear refusal."""
    import pickle

    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # an old (non-zip) torch file
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported pickle content"
        raise UnsafeCheckpointError(
            f"{path.name} needs pickled code to load, which could run anything, so it is refused "
            f"(torch.load weights_only: {first_line}). Convert it to .safetensors with a tool you trust."
        ) from None
    return unwrap_state_dict(data)


def unwrap_state_dict(data: Any) -> dict[str, Any]:
    """Checkpoints often nest the tensors under "state_dict"."""
    while isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"holds a {type(data).__name__}, not a dictionary of tensors")
    return dict(data)


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a single-file model (only the header of a safetensors file is read)."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return read_safetensors_shapes(path)
    state = load_pickle_state_dict(path)
    shapes = {}
    for key, value in state.items():  # one level of nesting: IP-Adapter .bin files hold {"image_proj": {...}, ...}
        inner = value.items() if isinstance(value, Mapping) else ()
        shapes.update({f"{key}.{k}": tuple(v.shape) for k, v in inner if hasattr(v, "shape")})
        if hasattr(value, "shape"):
            shapes[key] = tuple(value.shape)
    return shapes


@dataclass(frozen=True)
class CheckpointInfo:
    kind: str  # "main" or "vae"
    base: str | None  # sd1 / sd2 / sdxl; None for a VAE (it fits every base of its latent size)
    variant: str = "normal"  # "inpaint" when the UNet takes 9 input channels


def classify_sd_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> CheckpointInfo | None:
    """What SD model the tensor names/shapes describe, None if they are no SD model at all.

    Raises ValueError for an SD-like file this app cannot run (e.g. an unknown context size).
    """
    if any(k.startswith(UNET_PREFIX) for k in shapes):
        context_dims = {shape[1] for key, shape in shapes.items()
                        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight") and len(shape) == 2}
        if len(context_dims) != 1:
            raise ValueError("has a UNet but no readable cross-attention layers")
        (context_dim,) = context_dims
        base = BASE_BY_CONTEXT_DIM.get(context_dim) or _base_from_text_encoder(shapes)
        if base is None:
            raise ValueError(f"UNet with cross-attention size {context_dim} (SD 1.x: 768, SD 2.x: 1024, SDXL: 2048); "
                             "SDXL refiners and other architectures are not supported")
        conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight", (0, 4))
        return CheckpointInfo("main", base, "inpaint" if conv_in[1] == 9 else "normal")
    if _is_kl_vae({k[len(VAE_PREFIX):] if k.startswith(VAE_PREFIX) else k: v for k, v in shapes.items()}):
        return CheckpointInfo("vae", None)
    return None


def vae_base_from_name(path: Path) -> str:
    """The family a single-file VAE belongs to.  SD 1.x/2.x and SDXL VAEs share one architecture but not
    their latent scale (0.18215 / 0.13025), and the weights do not tell them apart: as in InvokeAI, the
    file's name does ("sdxl_vae.safetensors", "sdxl-vae-fp16-fix"); any other is SD 1.x/2.x's."""
    return "sdxl" if "xl" in Path(path).stem.lower() else "sd1"


def _base_from_text_encoder(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """For a UNet of non-standard width: the text encoder's layout names the family."""
    for prefix, base in TEXT_ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in shapes):
            return base
    return None


def _is_kl_vae(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """An SD (KL) autoencoder: quant_conv doubles the latent channels (mean and variance).

    VQ models (RestoreFormer, VQGAN) share the encoder/decoder names but keep the width and
    have a codebook.
    """
    quant, post_quant = shapes.get("quant_conv.weight"), shapes.get("post_quant_conv.weight")
    if quant is None or post_quant is None or "encoder.conv_in.weight" not in shapes or "decoder.conv_out.weight" not in shapes:
        return False
    return quant[0] == 2 * post_quant[1] and not any("quantize" in k or "codebook" in k for k in shapes)


# --------------------------------------------------------------------------------------------
# diffusers -> original Stable Diffusion (LDM) key layout.  diffusers converts the other way
# when it loads a single file; these writers let tests and demo models produce real SD files.

_RESNET_RENAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                   ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}


def _unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for every block of a UNet2DConditionModel config."""
    per_level = config["layers_per_block"] + 1
    levels = len(config["block_out_channels"])
    pairs = [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i, block_type in enumerate(config["down_block_types"]):
        for j in range(config["layers_per_block"]):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * per_level + j}.0."))
            if "CrossAttn" in block_type:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * per_level + j}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per_level}.0.op."))
    for i, block_type in enumerate(config["up_block_types"]):
        has_attention = "CrossAttn" in block_type
        for j in range(per_level):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per_level + j}.0."))
            if has_attention:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per_level + j}.1."))
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * per_level + per_level - 1}.{2 if has_attention else 1}."))
    return pairs


def unet_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    prefixes = _unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            new = f"{_UNET_TOP[module]}.{param}"
        else:
            new = None
            for diffusers_prefix, ldm_prefix in prefixes:
                if key.startswith(diffusers_prefix):
                    rest = key[len(diffusers_prefix):]
                    if ".resnets." in diffusers_prefix:
                        for old, replacement in _RESNET_RENAMES:
                            rest = re.sub(rf"^{old}\.", replacement + ".", rest)
                    new = ldm_prefix + rest
                    break
            if new is None:
                raise KeyError(f"no LDM name for UNet tensor {key}")
        out[UNET_PREFIX + new] = value
    return out


def vae_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    levels = len(config["block_out_channels"])
    renames = [("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2."),
               ("mid_block.attentions.0.", "mid.attn_1."), ("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut.")]
    for i in range(levels):
        renames += [(f"down_blocks.{i}.resnets.", f"down.{i}.block."),
                    (f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."),
                    (f"up_blocks.{i}.resnets.", f"up.{levels - 1 - i}.block."),
                    (f"up_blocks.{i}.upsamplers.0.", f"up.{levels - 1 - i}.upsample.")]
    attention = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))
    out = {}
    for key, value in state.items():
        new = key
        for old, replacement in renames:
            new = new.replace(old, replacement)
        if ".mid.attn_1." in new:
            for old, replacement in attention:
                new = new.replace(".mid.attn_1." + old, ".mid.attn_1." + replacement)
            if new.endswith("weight") and getattr(value, "ndim", 0) == 2:
                value = value[:, :, None, None]  # LDM stores these projections as 1x1 convolutions
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state: Mapping[str, Any]) -> dict[str, Any]:
    """HF CLIPTextModel tensors under SD 1.x's names (transformers 5 drops the "text_model." level)."""
    return {CLIP_L_PREFIX + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def sd1_to_ldm(unet: Any, vae: Any, text_encoder: Any) -> dict[str, Any]:
    """An SD 1.x pipeline's modules as one original-layout state dict (contiguous CPU tensors)."""
    state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
             **clip_to_ldm(text_encoder.state_dict())}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def controlnet_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ControlNetModel's tensors in the original `control_model.*` layout (its encoder
    half named as the UNet's, zero convolutions and the hint encoder as ControlNet 1.x names them)."""
    hint_blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    encoder, out = {}, {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module.startswith("controlnet_down_blocks."):
            new = f"zero_convs.{module.split('.')[1]}.0"
        elif module == "controlnet_mid_block":
            new = "middle_block_out.0"
        elif module.startswith("controlnet_cond_embedding."):
            part = module.split(".", 1)[1]
            index = 0 if part == "conv_in" else 2 * (hint_blocks + 1) if part == "conv_out" else 2 * (int(part.split(".")[1]) + 1)
            new = f"input_hint_block.{index}"
        else:
            encoder[key] = value
            continue
        out[f"control_model.{new}.{param}"] = value
    for key, value in unet_to_ldm(encoder, {**config, "up_block_types": []}).items():
        out["control_model." + key[len(UNET_PREFIX):]] = value
    return out
