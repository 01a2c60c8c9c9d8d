"""Applying LoRA stacks to a loaded model for the length of one block, without changing it.

The cached model is shared by every branch of every graph, so a LoRA is added into the weights it
touches and those weights are copied back from a saved original when the block ends (also on
error or cancel): the base model is bit-identical afterwards.  Adding into the weights (rather
than wrapping layers) keeps the denoising loop exactly as fast as without a LoRA.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch

from services.models.checkpoints import UNET_PREFIX, unet_to_ldm

log = logging.getLogger(__name__)


class LoRAMismatchError(ValueError):
    """A LoRA that does not fit the model: no layer of it is found, or one has another shape (another family)."""


# (LoRA weights, strength) in the order they stack
Stack = list[tuple[Any, float]]


def _flat(name: str) -> str:
    return name.replace(".", "_")


def module_index(component: str, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Flattened module name -> module, under every name LoRA files use for it (cached on the model)."""
    cached = model.__dict__.get("_invoke_nodes_lora_index")
    if cached is not None:
        return cached
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    index: dict[str, torch.nn.Module] = {}
    for name, module in layers.items():
        index[_flat(name)] = module
        if component != "unet" and not name.startswith("text_model."):
            index[_flat("text_model." + name)] = module  # transformers 5 names CLIP's modules without it; files use it
    if component == "unet":  # kohya's SDXL files use the original (LDM) names of the UNet's modules
        try:
            ldm = unet_to_ldm({f"{name}.weight": name for name in layers}, model.config)
        except KeyError:  # a UNet layout the LDM map does not cover: diffusers names only
            ldm = {}
        for ldm_key, name in ldm.items():
            index.setdefault(_flat(ldm_key[len(UNET_PREFIX):].rsplit(".", 1)[0]), layers[name])
    model.__dict__["_invoke_nodes_lora_index"] = index
    return index


def _targets(module: torch.nn.Module, owner: dict[int, tuple[Any, str]]) -> list[tuple[torch.Tensor, slice | None]]:
    """The weights a LoRA on `module` changes: its own, and its slice of a fused q/k/v projection
    (diffusers' fuse_qkv_projections, used on CUDA, computes with the fused copy)."""
    targets: list[tuple[torch.Tensor, slice | None]] = [(module.weight, None)]
    found = owner.get(id(module))
    if found is not None:
        attention, which = found
        if getattr(attention, "fused_projections", False):
            fused = getattr(attention, "to_qkv", None) if not attention.is_cross_attention else None
            parts = ("to_q", "to_k", "to_v")
            if fused is None and which != "to_q":
                fused, parts = getattr(attention, "to_kv", None), ("to_k", "to_v")
            if fused is not None and which in parts:
                rows = module.weight.shape[0]
                start = parts.index(which) * rows
                targets.append((fused.weight, slice(start, start + rows)))
    return targets


def _attention_owners(model: torch.nn.Module) -> dict[int, tuple[Any, str]]:
    owners: dict[int, tuple[Any, str]] = {}
    for module in model.modules():
        if hasattr(module, "fused_projections"):
            for which in ("to_q", "to_k", "to_v"):
                child = getattr(module, which, None)
                if child is not None:
                    owners[id(child)] = (module, which)
    return owners


@contextlib.contextmanager
def applied(components: dict[str, torch.nn.Module], stack: Stack, names: list[str] | None = None) -> Iterator[int]:
    """Add each LoRA of `stack` (times its strength) to the modules of `components` ("unet",
    "text_encoder", "text_encoder_2"); yields how many layers changed; restores the weights after.

    names: the LoRAs' ids, for messages.  A LoRA none of whose layers fits the model is refused.
    """
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    # inference_mode, not no_grad: weights loaded or moved under inference mode (as on CUDA) are
    # inference tensors, which only take in-place updates inside it
    try:
        with torch.inference_mode():
            for position, (lora, strength) in enumerate(stack):
                label = names[position] if names else f"LoRA {position + 1}"
                matched = _apply_one(components, lora, strength, saved, label)
                if matched == 0:
                    wanted = sorted({key.split(":")[0] for key in lora.layers})
                    raise LoRAMismatchError(f"LoRA '{label}' fits none of the model's layers (it changes {', '.join(wanted)}): "
                                     "is it made for another model family?")
        yield len(saved)
    finally:
        with torch.inference_mode():
            for weight, original in saved.values():
                weight.copy_(original)


def _apply_one(components: dict[str, torch.nn.Module], lora: Any, strength: float,
               saved: dict[int, tuple[torch.Tensor, torch.Tensor]], label: str) -> int:
    matched = 0
    by_component = {name: (module_index(name, model), _attention_owners(model)) for name, model in components.items()}
    for key, layer in lora.layers.items():
        component, module_name = key.split(":", 1)
        if component not in by_component:
            continue  # e.g. the text-encoder layers when this block patches the UNet only
        index, owners = by_component[component]
        module = index.get(module_name)
        if module is None:
            log.debug("LoRA layer %s matches no module", key)
            continue
        size = (layer.up.shape[0], layer.down[0].numel())
        if size != (module.weight.shape[0], module.weight[0].numel()):
            raise LoRAMismatchError(f"LoRA '{label}' does not fit this model: its layer {module_name} is "
                                    f"{size[0]}x{size[1]}, the model's {module.weight.shape[0]}x{module.weight[0].numel()} "
                                    "(made for another model family?)")
        matched += 1
        if strength == 0:
            continue
        for weight, rows in _targets(module, owners):
            if id(weight) not in saved:
                saved[id(weight)] = (weight, weight.detach().clone())
            part = weight if rows is None else weight[rows]
            delta = (layer.delta().to(weight.device) * strength).reshape(part.shape)
            part.copy_((part.float() + delta).to(weight.dtype))
    return matched
