"""ComfyUI workflows: the API format ({"3": {"class_type": "KSampler", "inputs": {...}}}) and the UI
format (litegraph "nodes" + "links", positions, widget values by position), as JSON or PNG chunks.

Both are first read into one form, {id: {"class_type", "inputs": {name: value | [source id, slot]},
"pos"}}; each class then maps onto our nodes (HANDLERS).  Field orders follow ComfyUI's nodes.py
INPUT_TYPES (required, then optional); the UI format adds a "control_after_generate" widget after
each seed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from nodes.base import SEED_MAX

from .report import (CONTROLS, GraphBuilder, ImportReport, ImportResult, ModelCatalog, control_kind,
                     model_key, model_value, sampler_values)

SEED = "control_after_generate"
# class_type -> its widget names in widgets_values order (UI format).
WIDGETS: dict[str, list[str]] = {
    "KSampler": ["seed", SEED, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", SEED, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "CheckpointLoader": ["config_name", "ckpt_name"],
    "CLIPTextEncode": ["text"],
    "CLIPTextEncodeSDXL": ["width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g", "text_l"],
    "CLIPTextEncodeSDXLRefiner": ["ascore", "width", "height", "text"],
    "CLIPSetLastLayer": ["stop_at_clip_layer"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "VAEDecode": [], "VAEEncode": [], "SetLatentNoiseMask": [],
    "VAEEncodeForInpaint": ["grow_mask_by"],
    "VAELoader": ["vae_name"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "LatentUpscale": ["upscale_method", "width", "height", "crop"],
    "LatentUpscaleBy": ["upscale_method", "scale_by"],
    "LoadImage": ["image", "upload"],
    "LoadImageMask": ["image", "channel", "upload"],
    "SaveImage": ["filename_prefix"], "PreviewImage": [],
    "ImageScale": ["upscale_method", "width", "height", "crop"],
    "ImageScaleBy": ["upscale_method", "scale_by"],
    "UpscaleModelLoader": ["model_name"], "ImageUpscaleWithModel": [],
    "ConditioningCombine": [], "ConditioningConcat": [],
    "ConditioningAverage": ["conditioning_to_strength"],
    "ConditioningSetMask": ["strength", "set_cond_area"],
    "ConditioningSetArea": ["width", "height", "x", "y", "strength"],
    "ControlNetLoader": ["control_net_name"], "DiffControlNetLoader": ["control_net_name"],
    "ControlNetApply": ["strength"],
    "ControlNetApplyAdvanced": ["strength", "start_percent", "end_percent"],
    "Canny": ["low_threshold", "high_threshold"],
    "PrimitiveNode": ["value", SEED],
    "Note": ["text"], "MarkdownNote": ["text"],
}
# ComfyUI sampler_name -> ours (None: no equivalent)
SAMPLERS: dict[str, str | None] = {
    "euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "heunpp2": "heun", "dpm_2": "dpm_2",
    "dpm_2_ancestral": "dpm_2_a", "lms": "lms", "dpm_fast": None, "dpm_adaptive": None,
    "dpmpp_2s_ancestral": "dpmpp_2s_a", "dpmpp_sde": "dpmpp_sde", "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m": "dpmpp_2m", "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde": "dpmpp_3m_sde", "dpmpp_3m_sde_gpu": "dpmpp_3m_sde", "ddpm": "ddpm", "lcm": "lcm",
    "ddim": "ddim", "uni_pc": "unipc", "uni_pc_bh2": "unipc",
}
SCHEDULERS = {"normal": "normal", "karras": "karras", "exponential": "exponential", "sgm_uniform": "sgm_uniform",
              "simple": "normal", "ddim_uniform": "normal", "beta": "normal"}
LATENT_MODES = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic",
                "bislerp": "bilinear"}
IMAGE_MODES = {"nearest-exact": "nearest", "bilinear": "bilinear", "area": "bilinear", "bicubic": "bicubic",
               "lanczos": "lanczos"}
OUTPUT_NODES = {"SaveImage", "PreviewImage"}
Out = dict[int, Any]  # output slot -> (our node id, field) or a literal value (a primitive)


def is_api_format(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and all(isinstance(v, dict) and "class_type" in v for v in data.values())


def is_ui_format(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list)
            and all(isinstance(n, dict) and "type" in n and "id" in n for n in data["nodes"]))


def read_api(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(k): {"class_type": str(v["class_type"]), "inputs": dict(v.get("inputs") or {}),
                     "title": (v.get("_meta") or {}).get("title")} for k, v in data.items()}


def read_ui(data: dict[str, Any], report: ImportReport) -> dict[str, dict[str, Any]]:
    """The UI format in the API form, positions kept.  Bypassed nodes pass their inputs through;
    muted ones are left out (ComfyUI does the same when it queues the workflow)."""
    links: dict[Any, tuple[str, int]] = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (str(link[1]), int(link[2]))
        elif isinstance(link, dict):
            links[link.get("id")] = (str(link.get("origin_id")), int(link.get("origin_slot", 0)))
    nodes: dict[str, dict[str, Any]] = {}
    for raw in data["nodes"]:
        node_id, class_type = str(raw["id"]), str(raw["type"])
        inputs: dict[str, Any] = {}
        values = raw.get("widgets_values")
        if isinstance(values, dict):  # some custom nodes save widgets by name
            inputs.update(values)
        elif isinstance(values, list):
            names = WIDGETS.get(class_type, [])
            inputs.update({name: value for name, value in zip(names, values) if name != SEED})
        widgets = dict(inputs)  # what a linked widget held: used when its link comes from an unmapped node
        link_inputs = [i for i in raw.get("inputs") or [] if isinstance(i, dict)]
        for slot in link_inputs:
            if slot.get("link") is not None and slot["link"] in links:
                inputs[str(slot.get("name"))] = list(links[slot["link"]])
        pos = raw.get("pos")
        if isinstance(pos, dict):
            pos = [pos.get("0", 0), pos.get("1", 0)]
        mode = raw.get("mode", 0)
        if mode == 2:
            report.unmapped_node(node_id, class_type, "muted in the workflow")
            continue
        node = {"class_type": class_type, "inputs": inputs, "widgets": widgets, "title": raw.get("title"),
                "pos": pos if isinstance(pos, list) else None}
        if mode == 4:  # bypassed: each output takes the first input of the same type
            in_types = [(str(i.get("type")), links.get(i.get("link"))) for i in link_inputs]
            outs = [str(o.get("type")) for o in raw.get("outputs") or [] if isinstance(o, dict)]
            node = {"class_type": "<bypassed>", "of": class_type,
                    "through": [next((src for t, src in in_types if t == out and src), None) for out in outs]}
        nodes[node_id] = node
    return nodes


def convert(nodes: dict[str, dict[str, Any]], report: ImportReport, catalog: ModelCatalog,
            folder: Path | None) -> ImportResult:
    return _Converter(nodes, report, catalog, folder).run()


class _Converter:
    def __init__(self, nodes: dict[str, dict[str, Any]], report: ImportReport, catalog: ModelCatalog,
                 folder: Path | None) -> None:
        self.nodes, self.report, self.catalog, self.folder = nodes, report, catalog, folder
        self.builder = GraphBuilder(report)
        self.out: dict[str, Out] = {}
        self.bases: dict[str, str] = {}  # checkpoint loader id -> sd1 | sdxl

    def run(self) -> ImportResult:
        self.report.total = len(self.nodes) + len(self.report.unmapped)
        for node_id in self._order():
            node = self.nodes[node_id]
            kind = node["class_type"]
            if kind == "<bypassed>":
                self.out[node_id] = {slot: self._resolve(src) for slot, src in enumerate(node["through"]) if src}
                self.report.unmapped_node(node_id, node["of"], "bypassed in the workflow: its inputs pass through")
                continue
            handler = HANDLERS.get(kind)
            if handler is None:
                reason = "custom node" if kind not in WIDGETS else "no equivalent here"
                self.report.unmapped_node(node_id, kind, reason)
                continue
            self.report.imported.append(f"{node_id} ({kind})")
            self.out[node_id] = handler(self, node_id, node) or {}
        return self.builder.finish()

    def _order(self) -> list[str]:
        seen: set[str] = set()
        order: list[str] = []
        for start in self.nodes:
            stack = [(start, False)]
            while stack:
                node_id, done = stack.pop()
                if done:
                    order.append(node_id)
                    continue
                if node_id in seen or node_id not in self.nodes:
                    continue
                seen.add(node_id)
                stack.append((node_id, True))
                for src in self._sources(node_id):
                    if src not in seen:
                        stack.append((src, False))
        return order

    def _sources(self, node_id: str) -> list[str]:
        node = self.nodes[node_id]
        if node["class_type"] == "<bypassed>":
            return [src[0] for src in node["through"] if src]
        return [v[0] for v in node["inputs"].values() if _is_link(v)]

    # --- inputs ------------------------------------------------------------------------------

    def _resolve(self, link: Any) -> Any:
        """What a [source id, slot] link carries here: (our node, field), a literal, or None."""
        source, slot = str(link[0]), int(link[1])
        return self.out.get(source, {}).get(slot)

    def value(self, node: dict[str, Any], name: str, default: Any = None) -> Any:
        raw = node["inputs"].get(name, default)
        if _is_link(raw):
            resolved = self._resolve(raw)
            return resolved if resolved is not None and not isinstance(resolved, tuple) else node.get("widgets", {}).get(name, default)
        return raw

    def wire(self, node: dict[str, Any], name: str, to_node: str, to_field: str) -> None:
        raw = node["inputs"].get(name)
        if _is_link(raw) and isinstance(resolved := self._resolve(raw), tuple):
            self.builder.link(resolved[0], resolved[1], to_node, to_field)

    def add(self, node_id: str, node: dict[str, Any], node_type: str, values: dict[str, Any], suffix: str = "") -> str:
        return self.builder.add(node_type, values, node_id + suffix, f"{node_id} ({node['class_type']})", node.get("pos"))

    def base_of(self, node: dict[str, Any], name: str) -> str:
        """sd1 or sdxl: the family of the checkpoint a clip/model input comes from."""
        raw, hops = node["inputs"].get(name), 0
        while _is_link(raw) and hops < 64:
            source = str(raw[0])
            if source in self.bases:
                return self.bases[source]
            upstream = self.nodes.get(source, {}).get("inputs", {})
            raw, hops = upstream.get(name, upstream.get("clip", upstream.get("model"))), hops + 1
        return "sd1"

    def image_path(self, name: str) -> str:
        """A LoadImage file: beside the imported file (or in its input/ folder), else reported."""
        for folder in ((self.folder, self.folder / "input") if self.folder else ()):
            if (folder / name).is_file():
                return str(folder / name)
        self.report.notes.append(f"image {name!r} is not beside the imported file: pick it in the load_image node")
        return name


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool)


def _seed(value: Any) -> int:
    try:
        return int(value) % (SEED_MAX + 1)
    except (TypeError, ValueError):
        return -1


def _cells(value: Any, default: int = 512) -> int:
    try:
        return max(64, int(value) // 8 * 8)
    except (TypeError, ValueError):
        return default


# --- handlers ----------------------------------------------------------------------------------

def _checkpoint(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    name = str(c.value(node, "ckpt_name", ""))
    model = c.catalog.match(c.report, "main", name)
    c.bases[node_id] = model.base if model is not None and model.base else ("sdxl" if "xl" in model_key(name) else "sd1")
    our = c.add(node_id, node, "main_model_loader", {"model": model_value(model, name)})
    return {0: (our, "unet"), 1: (our, "clip"), 2: (our, "vae")}


def _text(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    kind = "sdxl_prompt" if c.base_of(node, "clip") == "sdxl" else "prompt"
    our = c.add(node_id, node, kind, {"prompt": str(c.value(node, "text", ""))})
    c.wire(node, "clip", our, "clip")
    return {0: (our, "conditioning")}


def _text_sdxl(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    # text_l feeds CLIP-L (the first encoder, our `prompt`), text_g OpenCLIP bigG (`prompt_2`)
    text_g, text_l = str(c.value(node, "text_g", "")), str(c.value(node, "text_l", ""))
    our = c.add(node_id, node, "sdxl_prompt", {"prompt": text_l or text_g, "prompt_2": text_g if text_g != text_l else ""})
    c.wire(node, "clip", our, "clip")
    c.report.notes.append(f"{node_id} (CLIPTextEncodeSDXL): size and crop conditioning come from the latents here")
    return {0: (our, "conditioning")}


def _text_refiner(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "sdxl_prompt", {"prompt": str(c.value(node, "text", ""))})
    c.wire(node, "clip", our, "clip")
    return {0: (our, "conditioning")}


def _clip_skip(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    layer = int(c.value(node, "stop_at_clip_layer", -1))
    our = c.add(node_id, node, "clip_skip", {"skip": max(0, -layer - 1)})
    c.wire(node, "clip", our, "clip")
    return {0: (our, "clip")}


def _sampler(c: _Converter, node_id: str, node: dict[str, Any], advanced: bool) -> Out:
    name = str(c.value(node, "sampler_name", "euler"))
    values: dict[str, Any] = {
        "steps": int(c.value(node, "steps", 20)), "cfg_scale": float(c.value(node, "cfg", 8.0)),
        "seed": _seed(c.value(node, "noise_seed" if advanced else "seed", 0)),
        **sampler_values(c.report, SAMPLERS.get(name), SCHEDULERS.get(str(c.value(node, "scheduler", "normal")), "normal"), name),
    }
    if advanced:
        steps = max(1, values["steps"])
        values["add_noise"] = c.value(node, "add_noise", "enable") != "disable"
        values["denoise_start"] = min(1.0, max(0, int(c.value(node, "start_at_step", 0))) / steps)
        values["denoise_end"] = min(1.0, max(0, int(c.value(node, "end_at_step", 10000))) / steps)
    else:
        denoise = float(c.value(node, "denoise", 1.0))
        if 0 < denoise < 1:  # ComfyUI runs the last `steps` of a schedule of steps/denoise
            values["steps"], values["denoise_start"] = int(values["steps"] / denoise), round(1 - denoise, 4)
    our = c.add(node_id, node, "denoise_latents", values)
    for theirs, ours in (("model", "unet"), ("positive", "positive"), ("negative", "negative"), ("latent_image", "latents")):
        c.wire(node, theirs, our, ours)
    return {0: (our, "latents")}


def _empty(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "empty_latent", {"width": _cells(c.value(node, "width", 512)),
                                                "height": _cells(c.value(node, "height", 512)),
                                                "batch_size": int(c.value(node, "batch_size", 1))})
    return {0: (our, "latents")}


def _decode(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "vae_decode", {})
    c.wire(node, "samples", our, "latents")
    c.wire(node, "vae", our, "vae")
    return {0: (our, "image")}


def _encode(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "vae_encode", {})
    c.wire(node, "pixels", our, "image")
    c.wire(node, "vae", our, "vae")
    return {0: (our, "latents")}


def _encode_inpaint(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    encode = c.add(node_id, node, "vae_encode", {})
    c.wire(node, "pixels", encode, "image")
    c.wire(node, "vae", encode, "vae")
    masked = c.add(node_id, node, "set_latent_noise_mask", {}, "-mask")
    c.builder.link(encode, "latents", masked, "latents")
    grow = int(c.value(node, "grow_mask_by", 6))
    if grow > 0:
        grown = c.add(node_id, node, "mask_grow", {"pixels": grow}, "-grow")
        c.wire(node, "mask", grown, "mask")
        c.builder.link(grown, "image", masked, "mask")
    else:
        c.wire(node, "mask", masked, "mask")
    c.report.notes.append(f"{node_id} (VAEEncodeForInpaint): the masked pixels are kept, not greyed out, before encoding")
    return {0: (masked, "latents")}


def _noise_mask(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "set_latent_noise_mask", {})
    c.wire(node, "samples", our, "latents")
    c.wire(node, "mask", our, "mask")
    return {0: (our, "latents")}


def _vae_loader(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    name = str(c.value(node, "vae_name", ""))
    our = c.add(node_id, node, "vae_loader", {"vae_model": model_value(c.catalog.match(c.report, "vae", name), name)})
    return {0: (our, "vae")}


def _lora(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    name = str(c.value(node, "lora_name", ""))
    our = c.add(node_id, node, "lora_loader", {"lora": model_value(c.catalog.match(c.report, "lora", name), name),
                                               "unet_weight": float(c.value(node, "strength_model", 1.0)),
                                               "clip_weight": float(c.value(node, "strength_clip", 1.0))})
    c.wire(node, "model", our, "unet")
    c.wire(node, "clip", our, "clip")
    return {0: (our, "unet"), 1: (our, "clip")}


def _latent_upscale(c: _Converter, node_id: str, node: dict[str, Any], by: bool) -> Out:
    mode = LATENT_MODES.get(str(c.value(node, "upscale_method", "bilinear")), "bilinear")
    values: dict[str, Any] = {"mode": mode}
    if by:
        values["scale"] = float(c.value(node, "scale_by", 1.5))
    else:
        values.update(width=_cells(c.value(node, "width", 512)), height=_cells(c.value(node, "height", 512)))
    our = c.add(node_id, node, "latent_upscale", values)
    c.wire(node, "samples", our, "latents")
    return {0: (our, "latents")}


def _load_image(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "load_image", {"path": c.image_path(str(c.value(node, "image", "")))})
    # ComfyUI's MASK output is 1 where the image is transparent: our mask_from_alpha
    mask = c.add(node_id, node, "mask_from_alpha", {}, "-mask")
    c.builder.link(our, "image", mask, "image")
    return {0: (our, "image"), 1: (mask, "image")}


def _load_mask(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "load_image", {"path": c.image_path(str(c.value(node, "image", "")))})
    if c.value(node, "channel", "alpha") != "alpha":
        return {0: (our, "image")}
    mask = c.add(node_id, node, "mask_from_alpha", {}, "-mask")
    c.builder.link(our, "image", mask, "image")
    return {0: (mask, "image")}


def _save(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    prefix = str(c.value(node, "filename_prefix", "ComfyUI")).replace("\\", "/").rsplit("/", 1)[-1]
    our = c.add(node_id, node, "save_image", {"filename": prefix})
    c.wire(node, "images", our, "image")
    return {}


def _preview(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "show_image", {})
    c.wire(node, "images", our, "image")
    return {}


def _image_scale(c: _Converter, node_id: str, node: dict[str, Any], by: bool) -> Out:
    resample = IMAGE_MODES.get(str(c.value(node, "upscale_method", "bicubic")), "bicubic")
    if by:
        our = c.add(node_id, node, "scale", {"factor": float(c.value(node, "scale_by", 1.0)), "resample": resample})
    else:
        our = c.add(node_id, node, "resize", {"width": int(c.value(node, "width", 512)),
                                              "height": int(c.value(node, "height", 512)), "resample": resample})
    c.wire(node, "image", our, "image")
    return {0: (our, "image")}


def _upscale_loader(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    name = str(c.value(node, "model_name", ""))
    return {0: model_value(c.catalog.match(c.report, "upscaler", name), name)}  # a name, read by the upscale node


def _upscale(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "upscale", {"model": c.value(node, "upscale_model", "")})
    c.wire(node, "image", our, "image")
    return {0: (our, "image")}


def _combine(c: _Converter, node_id: str, node: dict[str, Any], names: tuple[str, str], node_type: str) -> Out:
    """ConditioningCombine evaluates both and averages them (our conditioning_regions);
    ConditioningConcat joins the prompts (our conditioning_combine)."""
    our = c.add(node_id, node, node_type, {})
    c.wire(node, names[0], our, "first")
    c.wire(node, names[1], our, "second")
    return {0: (our, "conditioning")}


def _average(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    strength = float(c.value(node, "conditioning_to_strength", 1.0))
    our = c.add(node_id, node, "conditioning_blend", {"alpha": min(1.0, max(0.0, 1 - strength))})
    c.wire(node, "conditioning_to", our, "first")
    c.wire(node, "conditioning_from", our, "second")
    return {0: (our, "conditioning")}


def _control_loader(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    name = str(c.value(node, "control_net_name", ""))
    kind = control_kind(c.catalog, name)  # T2I-Adapters load through ControlNetLoader too
    loader, pin, _ = CONTROLS[kind]
    if node["class_type"] == "DiffControlNetLoader":
        c.report.notes.append(f"{node_id} (DiffControlNetLoader): loaded as a full {kind} (its model input is not used)")
    our = c.add(node_id, node, loader, {"model": model_value(c.catalog.match(c.report, kind, name), name)})
    return {0: (our, pin)}


def _control_apply(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    """ControlNetApply steers one conditioning (in ComfyUI: the positive): it goes in as both rows and
    only the positive comes out, so the other row stays unsteered, as there."""
    raw = node["inputs"].get("control_net")
    source = c._resolve(raw) if _is_link(raw) else None
    kind = "t2i_adapter" if isinstance(source, tuple) and source[1] == "t2i_adapter" else "controlnet"
    _, pin, apply = CONTROLS[kind]
    our = c.add(node_id, node, apply, {"strength": float(c.value(node, "strength", 1.0)),
                                       "start_percent": float(c.value(node, "start_percent", 0.0)),
                                       "end_percent": float(c.value(node, "end_percent", 1.0))})
    c.wire(node, "control_net", our, pin)
    c.wire(node, "image", our, "image")
    if node["class_type"] == "ControlNetApply":
        c.wire(node, "conditioning", our, "positive")
        c.wire(node, "conditioning", our, "negative")
        return {0: (our, "positive")}
    c.wire(node, "positive", our, "positive")
    c.wire(node, "negative", our, "negative")
    return {0: (our, "positive"), 1: (our, "negative")}


def _set_mask(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    our = c.add(node_id, node, "conditioning_set_mask", {"strength": float(c.value(node, "strength", 1.0))})
    c.wire(node, "conditioning", our, "conditioning")
    c.wire(node, "mask", our, "mask")
    if c.value(node, "set_cond_area", "default") != "default":
        c.report.notes.append(f"{node_id} (ConditioningSetMask): 'mask bounds' is not carried over: the prompt is drawn "
                              "at the whole image's size, weighted by the mask")
    return {0: (our, "conditioning")}


def _set_area(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    # pixels in both; ComfyUI keeps whole 8-pixel latent cells (it divides by 8), and so do we
    values = {k: int(c.value(node, k, 0)) // 8 * 8 for k in ("x", "y")}
    values.update({k: max(8, int(c.value(node, k, 64)) // 8 * 8) for k in ("width", "height")})
    our = c.add(node_id, node, "conditioning_set_area", {**values, "strength": float(c.value(node, "strength", 1.0))})
    c.wire(node, "conditioning", our, "conditioning")
    return {0: (our, "conditioning")}


def _canny(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    # ComfyUI's thresholds are on 0..1 pixels (kornia), ours on 0..255 ones (OpenCV)
    low, high = (min(1020, max(0, round(float(c.value(node, k, d)) * 255)))
                 for k, d in (("low_threshold", 0.4), ("high_threshold", 0.8)))
    our = c.add(node_id, node, "canny", {"low_threshold": low, "high_threshold": high})
    c.wire(node, "image", our, "image")
    c.report.notes.append(f"{node_id} (Canny): thresholds {low}/{high} of 255 (OpenCV's Canny; ComfyUI's blurs first "
                          "and measures gradients differently, so the edges differ a little)")
    return {0: (our, "image")}


def _primitive(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    return {0: node["inputs"].get("value")}


def _reroute(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    source = next((v for v in node["inputs"].values() if _is_link(v)), None)
    return {0: c._resolve(source)} if source else {}


def _note(c: _Converter, node_id: str, node: dict[str, Any]) -> Out:
    c.add(node_id, node, "note", {"text": str(c.value(node, "text", ""))})
    return {}


HANDLERS: dict[str, Callable[[_Converter, str, dict[str, Any]], Out | None]] = {
    "CheckpointLoaderSimple": _checkpoint, "CheckpointLoader": _checkpoint,
    "CLIPTextEncode": _text, "CLIPTextEncodeSDXL": _text_sdxl, "CLIPTextEncodeSDXLRefiner": _text_refiner,
    "CLIPSetLastLayer": _clip_skip,
    "KSampler": lambda c, i, n: _sampler(c, i, n, False), "KSamplerAdvanced": lambda c, i, n: _sampler(c, i, n, True),
    "EmptyLatentImage": _empty, "VAEDecode": _decode, "VAEEncode": _encode, "VAEEncodeForInpaint": _encode_inpaint,
    "SetLatentNoiseMask": _noise_mask, "VAELoader": _vae_loader, "LoraLoader": _lora,
    "LatentUpscale": lambda c, i, n: _latent_upscale(c, i, n, False),
    "LatentUpscaleBy": lambda c, i, n: _latent_upscale(c, i, n, True),
    "LoadImage": _load_image, "LoadImageMask": _load_mask, "SaveImage": _save, "PreviewImage": _preview,
    "ImageScale": lambda c, i, n: _image_scale(c, i, n, False), "ImageScaleBy": lambda c, i, n: _image_scale(c, i, n, True),
    "UpscaleModelLoader": _upscale_loader, "ImageUpscaleWithModel": _upscale,
    "ConditioningCombine": lambda c, i, n: _combine(c, i, n, ("conditioning_1", "conditioning_2"), "conditioning_regions"),
    "ConditioningConcat": lambda c, i, n: _combine(c, i, n, ("conditioning_to", "conditioning_from"), "conditioning_combine"),
    "ConditioningAverage": _average, "ConditioningSetMask": _set_mask, "ConditioningSetArea": _set_area,
    "ControlNetLoader": _control_loader, "DiffControlNetLoader": _control_loader, "ControlNetApply": _control_apply,
    "ControlNetApplyAdvanced": _control_apply, "Canny": _canny,
    "PrimitiveNode": _primitive, "Reroute": _reroute, "Note": _note, "MarkdownNote": _note,
}

