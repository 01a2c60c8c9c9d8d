"""AUTOMATIC1111 / Forge "parameters" text (the PNG tEXt chunk, or the same text in a .txt file),
read as A1111's infotext_utils.parse_generation_parameters reads it, built into our granular
txt2img / img2img / hires-fix / refiner graph; and the other way, our graph as such a text
(`parameters_from_graph`), written into every PNG the app saves.

    a cat <lora:film:0.7>
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768, Model hash: 6ce0161689, Model: v1-5
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from nodes.base import SEED_MAX

from .report import (CONTROLS, GraphBuilder, ImportReport, ImportResult, ModelCatalog, control_kind, model_key, model_value,
                     sampler_values)

# infotext_utils.re_param_code: `Key: value` or `Key: "quoted, value"`, comma separated
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_LORA = re.compile(r"<(lora|lyco|hypernet):([^:>]+)(?::([-+]?[\d.]+))?(?::[^>]*)?>", re.IGNORECASE)
_HASH_IN_NAME = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")

# A1111 sampler label (without the schedule word) -> ours; None: no equivalent
SAMPLERS: dict[str, str | None] = {
    "euler a": "euler_a", "euler": "euler", "lms": "lms", "heun": "heun", "dpm2": "dpm_2", "dpm2 a": "dpm_2_a",
    "dpm++ 2s a": "dpmpp_2s_a", "dpm++ 2m": "dpmpp_2m", "dpm++ sde": "dpmpp_sde", "dpm++ 2m sde": "dpmpp_2m_sde",
    "dpm++ 2m sde heun": "dpmpp_2m_sde", "dpm++ 3m sde": "dpmpp_3m_sde", "dpm fast": None, "dpm adaptive": None,
    "ddim": "ddim", "plms": "pndm", "unipc": "unipc", "lcm": "lcm", "ddpm": "ddpm", "restart": None,
}
SCHEDULES = {"karras": "karras", "exponential": "exponential", "sgm uniform": "sgm_uniform", "automatic": "normal",
             "uniform": "normal", "normal": "normal", "simple": "normal"}
# our sampler -> A1111's label (export)
_TITLES = {"euler_a": "Euler a", "euler": "Euler", "lms": "LMS", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_a": "DPM2 a",
           "dpmpp_2s_a": "DPM++ 2S a", "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE",
           "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "pndm": "PLMS", "unipc": "UniPC", "lcm": "LCM", "ddpm": "DDPM"}
# settings this importer reads (the others are listed in the report as not carried over)
USED = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash",
        "Model", "Denoising strength", "Clip skip", "Hires upscale", "Hires steps", "Hires upscaler", "Hires resize",
        "Lora hashes", "Refiner", "Refiner switch at", "VAE", "VAE hash", "Mask blur", "Batch size"}
IGNORED = {"Version", "Hires sampler", "Hires schedule type", "Hires CFG Scale", "TI hashes", "Emphasis", "Module 1",
           "Module 2", "Module 3", "Inpaint area", "Masked content", "Masked area padding", "Face restoration"}


def looks_like(text: str) -> bool:
    return bool(re.search(r"(^|\n)\s*Steps:\s*\d+", text))


def parse(text: str) -> dict[str, str]:
    """{"Prompt", "Negative prompt", and each `Key: value` of the last line}."""
    *lines, last = text.strip().split("\n")
    params = dict(_PARAM.findall(last)) if len(_PARAM.findall(last)) >= 3 else {}
    if not params:
        lines.append(last)
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt).strip(), "Negative prompt": "\n".join(negative).strip()}
    for key, value in params.items():
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n")
        result[key.strip()] = value
    return result


def _sampler(report: ImportReport, params: dict[str, str]) -> dict[str, str]:
    label = params.get("Sampler", "Euler a").strip()
    schedule = SCHEDULES.get(params.get("Schedule type", "").strip().lower(), "normal")
    base = label.lower()
    for word, ours in (("karras", "karras"), ("exponential", "exponential")):
        if base.endswith(" " + word):
            base, schedule = base[: -len(word) - 1], ours
    return sampler_values(report, SAMPLERS.get(base), schedule, label)


def _number(params: dict[str, str], key: str, default: float) -> float:
    try:
        return float(params[key])
    except (KeyError, ValueError):
        return default


def _name_and_hash(value: str) -> tuple[str, list[str]]:
    match = _HASH_IN_NAME.match(value.strip())
    return (match.group(1), [match.group(2)]) if match else (value.strip(), [])


def _cells(value: float) -> int:
    return max(64, int(value) // 8 * 8)


def convert(text: str, report: ImportReport, catalog: ModelCatalog, image_path: Path | None) -> ImportResult:
    params = parse(text)
    report.total = len(params)
    report.imported = [k for k in params if k in USED]
    for key in params:
        if key in IGNORED:
            report.notes.append(f"setting '{key}' not carried over")
        elif key not in USED and not _UNIT.match(key):
            report.unmapped_node(key, "setting", "no equivalent here")
    b = GraphBuilder(report)
    source = "parameters (a1111)"
    hashes = {name.strip(): h.strip() for name, _, h in (p.partition(":") for p in params.get("Lora hashes", "").split(","))}

    def add(node_type: str, values: dict[str, Any], node_id: str) -> str:
        return b.add(node_type, values, node_id, source)

    name, model_hashes = _name_and_hash(params.get("Model", ""))
    model = catalog.match(report, "main", name, [params.get("Model hash", ""), *model_hashes])
    sdxl = (model.base == "sdxl") if model is not None else "xl" in model_key(name)
    loader = add("main_model_loader", {"model": model_value(model, name or params.get("Model hash", ""))}, "model")
    unet, clip = (loader, "unet"), (loader, "clip")

    prompt = params["Prompt"]
    for kind, lora_name, weight in _LORA.findall(prompt):
        if kind.lower() == "hypernet":
            report.unmapped_node(f"<hypernet:{lora_name}>", "hypernetwork", "hypernetworks are not supported")
            continue
        lora = catalog.match(report, "lora", lora_name, [hashes.get(lora_name, "")])
        node = add("lora_loader", {"lora": model_value(lora, lora_name), "unet_weight": float(weight or 1),
                                   "clip_weight": float(weight or 1)}, "lora")
        b.link(*unet, node, "unet")
        b.link(*clip, node, "clip")
        unet, clip = (node, "unet"), (node, "clip")
    prompt = parse_prompts(params)[0]
    skip = int(_number(params, "Clip skip", 1)) - 1
    if skip > 0:
        node = add("clip_skip", {"skip": skip}, "clip_skip")
        b.link(*clip, node, "clip")
        clip = (node, "clip")
    prompt_type = "sdxl_prompt" if sdxl else "prompt"
    positive = add(prompt_type, {"prompt": prompt}, "positive")
    negative = add(prompt_type, {"prompt": params["Negative prompt"]}, "negative")
    for node in (positive, negative):
        b.link(*clip, node, "clip")
    positive, negative = _controlnets(b, report, catalog, params, image_path, (positive, "conditioning"),
                                      (negative, "conditioning"))

    vae = (loader, "vae")
    if params.get("VAE"):
        vae_name, vae_hashes = _name_and_hash(params["VAE"])
        vae_model = catalog.match(report, "vae", vae_name, [params.get("VAE hash", ""), *vae_hashes])
        vae = (add("vae_loader", {"vae_model": model_value(vae_model, vae_name)}, "vae"), "vae")

    size = _SIZE.match(params.get("Size", "512x512")) or _SIZE.match("512x512")
    width, height = _cells(float(size.group(1))), _cells(float(size.group(2)))
    seed = int(_number(params, "Seed", -1)) % (SEED_MAX + 1)
    strength = _number(params, "Denoising strength", 0.0)
    hires = any(k.startswith("Hires") for k in params)
    first = {"steps": int(_number(params, "Steps", 20)), "cfg_scale": _number(params, "CFG scale", 7.0), "seed": seed,
             **_sampler(report, params)}
    if strength and not hires:  # img2img: the source picture is not in the text
        latents = _source_latents(b, report, image_path, vae, params, width, height)
        first["denoise_start"] = round(1 - strength, 4)
    else:
        latents = (add("empty_latent", {"width": width, "height": height}, "empty"), "latents")
    refiner_at = _number(params, "Refiner switch at", 0.0) if params.get("Refiner") else 0.0
    if 0 < refiner_at < 1:
        first["denoise_end"] = refiner_at
    denoise = add("denoise_latents", first, "denoise")
    for (node, field), to in ((unet, "unet"), (positive, "positive"), (negative, "negative"), (latents, "latents")):
        b.link(node, field, denoise, to)
    result = (denoise, "latents")
    if 0 < refiner_at < 1:
        result = _refiner(b, report, catalog, params, result, first, refiner_at)
    if hires:
        result = _hires(b, report, catalog, params, result, vae, unet, positive, negative, first, strength, width, height)
    decode = add("vae_decode", {}, "decode")
    b.link(*result, decode, "latents")
    b.link(*vae, decode, "vae")
    b.link(decode, "image", add("save_image", {}, "save"), "image")
    return b.finish()


def _source_latents(b: GraphBuilder, report: ImportReport, image_path: Path | None, vae: tuple[str, str],
                    params: dict[str, str], width: int, height: int) -> tuple[str, str]:
    report.notes.append("img2img: the source image is not in the parameters: load_image opens the imported image; "
                        "pick the source there")
    image = b.add("load_image", {"path": str(image_path) if image_path else ""}, "source", "parameters (a1111)")
    resized = b.add("resize", {"width": width, "height": height}, "source_size", "parameters (a1111)")
    b.link(image, "image", resized, "image")
    encode = b.add("vae_encode", {}, "encode", "parameters (a1111)")
    b.link(resized, "image", encode, "image")
    b.link(*vae, encode, "vae")
    if "Mask blur" not in params:
        return encode, "latents"
    report.notes.append("inpaint: the mask is not in the parameters: a white mask (redraw everything) stands in; "
                        "load yours into the mask")
    mask = b.add("solid_color", {"width": width, "height": height, "color": "#ffffff"}, "mask", "parameters (a1111)")
    blur = b.add("mask_blur", {"radius": _number(params, "Mask blur", 4.0)}, "mask_blur", "parameters (a1111)")
    b.link(mask, "image", blur, "mask")
    masked = b.add("set_latent_noise_mask", {}, "masked", "parameters (a1111)")
    b.link(encode, "latents", masked, "latents")
    b.link(blur, "image", masked, "mask")
    return masked, "latents"


def _refiner(b: GraphBuilder, report: ImportReport, catalog: ModelCatalog, params: dict[str, str],
             latents: tuple[str, str], first: dict[str, Any], switch: float) -> tuple[str, str]:
    name, hashes = _name_and_hash(params["Refiner"])
    model = catalog.match(report, "main", name, hashes)
    source = "parameters (a1111)"
    loader = b.add("main_model_loader", {"model": model_value(model, name)}, "refiner", source)
    texts = parse_prompts(params)
    prompts = [b.add("sdxl_prompt", {"prompt": text}, node_id, source)
               for text, node_id in zip(texts, ("refiner_positive", "refiner_negative"))]
    values = {k: v for k, v in first.items() if k != "denoise_end"} | {"denoise_start": switch, "add_noise": False}
    refine = b.add("denoise_latents", values, "refine", source)
    b.link(loader, "unet", refine, "unet")
    for node, to in zip(prompts, ("positive", "negative")):
        b.link(loader, "clip", node, "clip")
        b.link(node, "conditioning", refine, to)
    b.link(*latents, refine, "latents")
    return refine, "latents"


def parse_prompts(params: dict[str, str]) -> tuple[str, str]:
    """(prompt without its <lora:...> tags, negative prompt)."""
    prompt = params["Prompt"]
    if _LORA.search(prompt):
        prompt = re.sub(r"\s*,?\s*" + _LORA.pattern, "", prompt, flags=re.IGNORECASE).strip(" ,")
    return prompt, params["Negative prompt"]


def _hires(b: GraphBuilder, report: ImportReport, catalog: ModelCatalog, params: dict[str, str], latents: tuple[str, str],
           vae: tuple[str, str], unet: tuple[str, str], positive: tuple[str, str], negative: tuple[str, str],
           first: dict[str, Any], strength: float, width: int, height: int) -> tuple[str, str]:
    source = "parameters (a1111)"
    scale = _number(params, "Hires upscale", 2.0)
    resize = _SIZE.match(params.get("Hires resize", ""))
    target = ((_cells(float(resize.group(1))), _cells(float(resize.group(2)))) if resize
              else (_cells(width * scale), _cells(height * scale)))
    upscaler = params.get("Hires upscaler", "Latent")
    if upscaler.lower().startswith("latent"):
        mode = "nearest-exact" if "nearest" in upscaler.lower() else "bicubic" if "bicubic" in upscaler.lower() else "bilinear"
        node = b.add("latent_upscale", {"width": target[0], "height": target[1], "mode": mode}, "hires_upscale", source)
        b.link(*latents, node, "latents")
        upscaled = (node, "latents")
    else:  # a pixel upscaler: decode, upscale (with the model when it is here), resize to the target, encode
        decode = b.add("vae_decode", {}, "hires_decode", source)
        b.link(*latents, decode, "latents")
        b.link(*vae, decode, "vae")
        image = (decode, "image")
        model = catalog.match(report, "upscaler", upscaler)
        if model is not None:
            node = b.add("upscale", {"model": model.id}, "hires_model", source)
            b.link(*image, node, "image")
            image = (node, "image")
        else:
            report.notes.append(f"hires upscaler {upscaler!r} is not here: the image is resized (lanczos) instead")
        resized = b.add("resize", {"width": target[0], "height": target[1], "resample": "lanczos"}, "hires_resize", source)
        b.link(*image, resized, "image")
        encode = b.add("vae_encode", {}, "hires_encode", source)
        b.link(resized, "image", encode, "image")
        b.link(*vae, encode, "vae")
        upscaled = (encode, "latents")
    values = {k: v for k, v in first.items() if k not in ("denoise_end", "denoise_start")}
    values["steps"] = int(_number(params, "Hires steps", 0)) or first["steps"]
    values["denoise_start"] = round(1 - (strength or 0.7), 4)
    second = b.add("denoise_latents", values, "hires", source)
    for (node, field), to in ((unet, "unet"), (positive, "positive"), (negative, "negative"), (upscaled, "latents")):
        b.link(node, field, second, to)
    return second, "latents"


_UNIT = re.compile(r"^ControlNet(?: |-)?(\d*)$")
_RESOLUTION = {"resolution": ("Processor Res", 512)}
# sd-webui-controlnet module -> (our preprocessor, its fixed values, our field -> (unit key, default))
MODULES: dict[str, tuple[str, dict[str, Any], dict[str, tuple[str, float]]]] = {
    "canny": ("canny", {}, {"low_threshold": ("Threshold A", 100), "high_threshold": ("Threshold B", 200)}),
    "threshold": ("threshold", {}, {"level": ("Threshold A", 127)}),
    "scribble_xdog": ("scribble", {}, {"level": ("Threshold A", 32)}),
    "blur_gaussian": ("blur", {}, {"sigma": ("Threshold A", 9.0)}),
    "tile_resample": ("tile_resample", {}, {}),  # its down sampling rate is converted below
    "t2ia_color_grid": ("color_palette", {}, {}), "color": ("color_palette", {}, {}),
    "shuffle": ("content_shuffle", {}, {}),
    "softedge_hed": ("hed", {}, _RESOLUTION), "hed": ("hed", {}, _RESOLUTION),
    "lineart_realistic": ("lineart", {}, _RESOLUTION), "lineart": ("lineart", {}, _RESOLUTION),
    "lineart_coarse": ("lineart", {"coarse": True}, _RESOLUTION),
}


def _controlnets(b: GraphBuilder, report: ImportReport, catalog: ModelCatalog, params: dict[str, str],
                 image_path: Path | None, positive: tuple[str, str], negative: tuple[str, str]) -> tuple[tuple[str, str], tuple[str, str]]:
    """ControlNet units ("ControlNet 0": "Module: canny, Model: control_... [hash], Weight: 1, Guidance Start: 0, ...")
    -> preprocessor (when the module has one here) -> controlnet_apply / t2i_adapter_apply, stacked."""
    source, image = "parameters (a1111)", None
    for key, value in params.items():
        if not _UNIT.match(key):
            continue
        unit = {k.strip(): v.strip() for k, v in _PARAM.findall(value)}
        name, hashes = _name_and_hash(unit.get("Model", ""))
        module = unit.get("Module", "none")
        if name.lower() in ("", "none") or module.lower().startswith(("ip-adapter", "reference")):
            hint = ("IP-Adapter units are not imported: add an ip_adapter node" if "ip-adapter" in module.lower()
                    else "no equivalent here")
            report.unmapped_node(key, "ControlNet unit", f"module '{module}', model '{name}': {hint}")
            continue
        kind = control_kind(catalog, name, hashes)
        loader_type, pin, apply_type = CONTROLS[kind]
        model = catalog.match(report, kind, name, hashes)
        if image is None:  # one stand-in for every unit
            image = b.add("load_image", {"path": str(image_path) if image_path else ""}, "control_image", source)
            report.notes.append("ControlNet: the control images are not in the parameters: load_image opens the "
                                "imported image in their place; pick each unit's image there")
        control = _preprocess(b, report, key, unit, image)
        loader = b.add(loader_type, {"model": model_value(model, name)}, kind, source)
        apply = b.add(apply_type, {"strength": _float(unit.get("Weight"), 1.0),
                                   "start_percent": _float(unit.get("Guidance Start"), 0.0),
                                   "end_percent": _float(unit.get("Guidance End"), 1.0)}, f"{kind}_apply", source)
        b.link(loader, pin, apply, pin)
        b.link(control, "image", apply, "image")
        b.link(*positive, apply, "positive")
        b.link(*negative, apply, "negative")
        positive, negative = (apply, "positive"), (apply, "negative")
        for setting, usual in (("Resize Mode", "Just Resize"), ("Control Mode", "Balanced")):
            if unit.get(setting, usual) != usual:
                report.notes.append(f"{key}: {setting} '{unit[setting]}' is not carried over ({usual} is used)")
        report.imported.append(key)
    return positive, negative


def _preprocess(b: GraphBuilder, report: ImportReport, key: str, unit: dict[str, str], image: str) -> str:
    """The unit's preprocessor on the control image, or the image as it is (module none / not here)."""
    module = unit.get("Module", "none").lower()
    if module not in MODULES:
        if module != "none":
            report.notes.append(f"{key}: module '{module}' has no preprocessor here: the image goes in as it is")
        return image
    node_type, values, fields = MODULES[module]
    values = {**values, **{ours: type(default)(_float(unit.get(theirs), default)) for ours, (theirs, default) in fields.items()}}
    if module == "tile_resample":  # A1111 divides the size by its rate; ours halves it `levels` times
        values["levels"] = min(6, max(0, round(math.log2(max(1.0, _float(unit.get("Threshold A"), 1.0))))))
    node = b.add(node_type, values, module, "parameters (a1111)")
    b.link(image, "image", node, "image")
    return node


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


# --- export ------------------------------------------------------------------------------------

def parameters_from_graph(graph: dict[str, Any], node_id: str | None) -> str | None:
    """A1111's parameters text for the image a node made: the first denoising pass upstream of it
    (prompt, negative, steps, sampler, CFG, seed, size, model, LoRAs as <lora:name:weight>).
    None when no diffusion made the image."""
    nodes = {str(n.get("id")): n for n in graph.get("nodes", []) if isinstance(n, dict)}
    into: dict[str, dict[str, str]] = {}
    for link in graph.get("links", []):
        into.setdefault(str(link.get("to_node")), {})[str(link.get("to_field"))] = str(link.get("from_node"))
    upstream, stack = [], [str(node_id)]
    while stack:
        current = stack.pop()
        if current in nodes and current not in upstream:
            upstream.append(current)
            stack.extend(into.get(current, {}).values())
    order = [n for n in nodes if n in upstream]
    one_node = next((nodes[n] for n in order if nodes[n].get("type") in ("txt2img", "img2img", "inpaint")), None)
    denoise = next((nodes[n] for n in order if nodes[n].get("type") == "denoise_latents"), None)
    if one_node is not None and denoise is None:
        prompt, negative = one_node.get("prompt", ""), one_node.get("negative_prompt", "")
        sampler, schedule = one_node.get("scheduler", "euler"), "normal"
        values, model, loras = one_node, str(one_node.get("model", "")), []
        size = (one_node.get("width", 512), one_node.get("height", 512))
    elif denoise is not None:
        links = into.get(str(denoise["id"]), {})
        prompt, negative = _prompt_text(nodes, into, links.get("positive")), _prompt_text(nodes, into, links.get("negative"))
        sampler, schedule, values = denoise.get("sampler", "euler"), denoise.get("schedule", "normal"), denoise
        model, loras = _model_of(nodes, into, links.get("unet"))
        size = _size_of(nodes, into, links.get("latents"))
    else:
        return None
    if sampler == "dpmpp_2m_karras":
        sampler, schedule = "dpmpp_2m", "karras"
    label = _TITLES.get(str(sampler), str(sampler)) + {"karras": " Karras", "exponential": " Exponential"}.get(str(schedule), "")
    prompt = " ".join([prompt, *(f"<lora:{name}:{weight:g}>" for name, weight in loras)]).strip()
    fields = [f"Steps: {values.get('steps', 30)}", f"Sampler: {label}", f"CFG scale: {values.get('cfg_scale', 7.5):g}",
              f"Seed: {values.get('seed', -1)}"]
    if size is not None:
        fields.append(f"Size: {size[0]}x{size[1]}")
    if model:
        fields.append(f"Model: {model}")
    if denoise is not None and denoise.get("denoise_start"):
        fields.append(f"Denoising strength: {1 - float(denoise['denoise_start']):g}")
    elif one_node is not None and one_node.get("strength") is not None and one_node.get("type") != "txt2img":
        fields.append(f"Denoising strength: {one_node['strength']:g}")
    fields.append("Version: invoke-nodes")
    return "\n".join([prompt, *([f"Negative prompt: {negative}"] if negative else []), ", ".join(fields)])


def _prompt_text(nodes: dict[str, Any], into: dict[str, dict[str, str]], node_id: str | None) -> str:
    seen = 0
    while node_id in nodes and seen < 64:
        node, seen = nodes[node_id], seen + 1
        if node.get("type") in ("prompt", "sdxl_prompt"):
            return str(node.get("prompt", ""))
        links = into.get(node_id, {})
        node_id = links.get("first") or links.get("positive") or links.get("conditioning") or next(iter(links.values()), None)
    return ""


def _model_of(nodes: dict[str, Any], into: dict[str, dict[str, str]], node_id: str | None) -> tuple[str, list[tuple[str, float]]]:
    loras: list[tuple[str, float]] = []
    seen = 0
    while node_id in nodes and seen < 64:
        node, seen = nodes[node_id], seen + 1
        if node.get("type") == "main_model_loader":
            return str(node.get("model", "")), loras[::-1]
        if node.get("type") == "lora_loader":
            loras.append((str(node.get("lora", "")), float(node.get("unet_weight", 1.0))))
        node_id = into.get(node_id, {}).get("unet")
    return "", loras


def _size_of(nodes: dict[str, Any], into: dict[str, dict[str, str]], node_id: str | None) -> tuple[int, int] | None:
    seen = 0
    while node_id in nodes and seen < 64:
        node, seen = nodes[node_id], seen + 1
        if node.get("type") in ("empty_latent", "noise"):
            return int(node.get("width", 512)), int(node.get("height", 512))
        links = into.get(node_id, {})
        node_id = links.get("latents") or links.get("image")
        if node_id in nodes and nodes[node_id].get("type") == "resize":
            return int(nodes[node_id].get("width", 512)), int(nodes[node_id].get("height", 512))
    return None
