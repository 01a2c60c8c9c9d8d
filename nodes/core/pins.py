"""From model pins (UNetField, ClipField, VAEField) to loaded modules, with their LoRAs applied
while the block runs.  Errors name the node's field they came through."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..base import ClipField, NodeInputError, UNetField, VAEField
from .lora import LoRAMismatchError, applied


def model_info(context: Any, field: str, model_id: str, kind: str) -> Any:
    try:
        return context.models.get(model_id, kind=kind)
    except KeyError as exc:
        raise NodeInputError(field, str(exc.args[0]) if exc.args else str(exc)) from None


def _use(stack: contextlib.ExitStack, context: Any, field: str, *model_ids: str) -> list[Any]:
    """The loaded models, kept loaded until the stack closes; a file that does not load fails naming the field."""
    try:
        return stack.enter_context(context.models.use(*model_ids))
    except ValueError as exc:  # the manager's ModelLoadError: its message names the model and why
        raise NodeInputError(field, str(exc)) from None


@contextlib.contextmanager
def _with_loras(context: Any, field: str, model_id: str, loras: list[Any], parts: Any) -> Iterator[tuple[Any, Any]]:
    info = model_info(context, field, model_id, "main")
    lora_ids = [model_info(context, field, lora.model_id, "lora").id for lora in loras]
    with contextlib.ExitStack() as stack:
        loaded = _use(stack, context, field, info.id, *lora_ids)
        pipe = loaded[0]
        lora_stack = [(weights, lora.weight) for weights, lora in zip(loaded[1:], loras)]
        try:
            with applied(parts(pipe), lora_stack, lora_ids):
                yield pipe, info
        except LoRAMismatchError as exc:
            raise NodeInputError(field, str(exc)) from None


def unet(context: Any, pin: UNetField, field: str = "unet") -> contextlib.AbstractContextManager[tuple[Any, Any]]:
    """(pipeline, model info) with the pin's LoRAs added to the UNet for the block."""
    return _with_loras(context, field, pin.model_id, pin.loras, lambda pipe: {"unet": pipe.unet})


def clip(context: Any, pin: ClipField, field: str = "clip") -> contextlib.AbstractContextManager[tuple[Any, Any]]:
    """(pipeline, model info) with the pin's LoRAs added to the text encoder(s) for the block."""
    def parts(pipe: Any) -> dict[str, Any]:  # an SDXL refiner has only the second text encoder
        encoders = {name: getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2")}
        return {name: encoder for name, encoder in encoders.items() if encoder is not None}

    return _with_loras(context, field, pin.model_id, pin.loras, parts)


@contextlib.contextmanager
def vae(context: Any, pin: VAEField, field: str = "vae") -> Iterator[Any]:
    """The AutoencoderKL of a VAE pin (a main model's own, or a separate VAE)."""
    info = model_info(context, field, pin.model_id, None)  # type: ignore[arg-type]
    if info.kind not in ("main", "vae"):
        raise NodeInputError(field, f"'{pin.model_id}' is a {info.kind} model, not a main model or a VAE")
    with contextlib.ExitStack() as stack:
        (loaded,) = _use(stack, context, field, info.id)
        yield loaded.vae if info.kind == "main" else loaded


@contextlib.contextmanager
def embeddings(context: Any) -> Iterator[Any]:
    """name -> loaded embedding, for PromptEncoder; embeddings used stay loaded until the block ends."""
    with contextlib.ExitStack() as stack:
        found: dict[str, Any] = {}

        def lookup(name: str) -> Any:
            if name not in found:
                known = {info.name: info.id for info in context.models.list("embedding")}
                if name not in known:
                    raise KeyError(f"no embedding '{name}' in <models>/embeddings/ (known: {', '.join(sorted(known)) or 'none'})")
                try:
                    (found[name],) = stack.enter_context(context.models.use(known[name]))
                except ValueError as exc:  # a broken file: the prompt's error says where it is used
                    raise KeyError(str(exc)) from None
            return found[name]

        yield lookup


@contextlib.contextmanager
def controls(context: Any, positive: dict[str, Any], negative: dict[str, Any], unet_info: Any, unet: Any) -> Iterator[list[Any]]:
    """The ControlNets / T2I-Adapters the conditionings carry as (control, rows, loaded model), kept
    loaded for the block; one made for another model family fails naming the conditioning field."""
    from .controls import controls_of

    found = controls_of(positive, negative)
    with contextlib.ExitStack() as stack:
        infos = [model_info(context, "positive", control["model_id"], control["kind"]) for control, _ in found]
        models = _use(stack, context, "positive", *(info.id for info in infos)) if found else []
        for info, model in zip(infos, models):
            width = getattr(model.config, "cross_attention_dim", None)
            if (info.base == "sdxl") != (unet_info.base == "sdxl") or width not in (None, unet.config.cross_attention_dim):
                raise NodeInputError("positive", f"{info.kind} '{info.id}' is made for {info.base}, the UNet of "
                                                 f"'{unet_info.id}' is {unet_info.base}: use a control model of its family")
        yield [(control, rows, model) for (control, rows), model in zip(found, models)]


@contextlib.contextmanager
def ip_adapters(context: Any, pin: UNetField, unet: Any, field: str = "unet") -> Iterator[Any]:
    """The pin's IP-Adapters installed on `unet` for the block (controls.IPAdapterRun), None without any."""
    from .controls import ip_adapters_installed

    refs = [ref for ref in pin.ip_adapters if ref.weight != 0]  # weight 0: not installed at all
    if not refs:
        yield None
        return
    with contextlib.ExitStack() as stack:
        adapters = []
        for ref in refs:
            adapter_id = model_info(context, field, ref.model_id, "ip_adapter").id
            clip_id = model_info(context, field, ref.clip_vision_id, "clip_vision").id
            weights, clip_vision = _use(stack, context, field, adapter_id, clip_id)
            reads = clip_vision.config.projection_dim if weights.variant == "normal" else clip_vision.config.hidden_size
            if weights.image_width != reads:
                raise NodeInputError(field, f"IP-Adapter '{adapter_id}' reads CLIP image features {weights.image_width} wide, "
                                            f"'{clip_id}' gives {reads}: use the image encoder it was trained with")
            context_width = weights.state["ip_adapter"]["1.to_k_ip.weight"].shape[1]
            if context_width != unet.config.cross_attention_dim:
                raise NodeInputError(field, f"IP-Adapter '{adapter_id}' is made for another model family (its layers take "
                                            f"{context_width}, this UNet's {unet.config.cross_attention_dim})")
            try:
                image = context.images.get(ref.image)
            except KeyError as exc:
                raise NodeInputError(field, f"the image of IP-Adapter '{adapter_id}': {exc}") from None
            adapters.append((weights, clip_vision, image, ref))
        with ip_adapters_installed(unet, adapters) as run:
            yield run
