"""InvokeAI: workflow JSON (the editor's file, and the `invokeai_workflow` PNG chunk: nodes with
`data.inputs.{field}.value`, `position`, edges with source/sourceHandle/target/targetHandle) and the
executed graph (the `invokeai_graph` chunk: `nodes` by id, edges {source: {node_id, field},
destination: {...}}).  Field names follow invokeai/app/invocations/*.py; many match ours.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from nodes.base import SEED_MAX

from .report import CONTROLS, GraphBuilder, ImportReport, ImportResult, ModelCatalog, model_value, sampler_values

# InvokeAI scheduler -> (our sampler or None, schedule); "_k" is the Karras variant
_SAMPLER_OF = {"euler": "euler", "euler_a": "euler_a", "heun": "heun", "lms": "lms", "kdpm_2": "dpm_2",
               "kdpm_2_a": "dpm_2_a", "dpmpp_2s": "dpmpp_2s_a", "dpmpp_sde": "dpmpp_sde", "dpmpp_2m": "dpmpp_2m",
               "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_3m": "dpmpp_3m_sde", "ddim": "ddim", "ddpm": "ddpm",
               "pndm": "pndm", "unipc": "unipc", "lcm": "lcm", "deis": None, "tcd": None}

# type -> (our type, their input -> our input, their output -> our output)
TABLE: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "main_model_loader": ("main_model_loader", {}, {}),
    "sdxl_model_loader": ("main_model_loader", {}, {"clip2": "clip"}),
    "sdxl_refiner_model_loader": ("main_model_loader", {}, {"clip2": "clip"}),
    "vae_loader": ("vae_loader", {}, {}),
    "compel": ("prompt", {"prompt": "prompt", "clip": "clip"}, {}),
    "sdxl_compel_prompt": ("sdxl_prompt", {"prompt": "prompt", "style": "prompt_2", "clip": "clip"}, {}),
    "sdxl_refiner_compel_prompt": ("sdxl_prompt", {"style": "prompt", "clip2": "clip"}, {}),
    "clip_skip": ("clip_skip", {"clip": "clip", "skipped_layers": "skip"}, {}),
    "lora_loader": ("lora_loader", {"unet": "unet", "clip": "clip"}, {}),
    "sdxl_lora_loader": ("lora_loader", {"unet": "unet", "clip": "clip"}, {"clip2": "clip"}),
    "noise": ("noise", {"seed": "seed", "width": "width", "height": "height"}, {"noise": "latents"}),
    "denoise_latents": ("denoise_latents", {"positive_conditioning": "positive", "negative_conditioning": "negative",
                                            "noise": "noise", "latents": "latents", "unet": "unet", "steps": "steps",
                                            "cfg_scale": "cfg_scale", "denoise_start": "denoise_start",
                                            "denoise_end": "denoise_end", "denoise_mask": "mask"}, {}),
    "l2i": ("vae_decode", {"latents": "latents", "vae": "vae", "tiled": "tiled"}, {}),
    "i2l": ("vae_encode", {"image": "image", "vae": "vae"}, {}),
    "lscale": ("latent_upscale", {"latents": "latents", "scale_factor": "scale"}, {}),
    "lresize": ("latent_upscale", {"latents": "latents", "width": "width", "height": "height"}, {}),
    "image": ("load_image", {}, {}),
    "img_resize": ("resize", {"image": "image", "width": "width", "height": "height"}, {}),
    "img_scale": ("scale", {"image": "image", "scale_factor": "factor"}, {}),
    "esrgan": ("upscale", {"image": "image"}, {}),
    "save_image": ("save_image", {"image": "image"}, {}),
    "canvas_output": ("save_image", {"image": "image"}, {}),
    "show_image": ("show_image", {"image": "image"}, {}),
    "canny_image_processor": ("canny", {"image": "image", "low_threshold": "low_threshold",
                                        "high_threshold": "high_threshold"}, {}),
    "canny_edge_detection": ("canny", {"image": "image", "low_threshold": "low_threshold",
                                       "high_threshold": "high_threshold"}, {}),
    "hed_image_processor": ("hed", {"image": "image", "detect_resolution": "resolution"}, {}),
    "hed_edge_detection": ("hed", {"image": "image"}, {}),
    "lineart_image_processor": ("lineart", {"image": "image", "detect_resolution": "resolution", "coarse": "coarse"}, {}),
    "lineart_edge_detection": ("lineart", {"image": "image", "coarse": "coarse"}, {}),
    "content_shuffle_image_processor": ("content_shuffle", {"image": "image"}, {}),
    "content_shuffle": ("content_shuffle", {"image": "image"}, {}),
    "color_map_image_processor": ("color_palette", {"image": "image", "color_map_tile_size": "cell"}, {}),
    "color_map": ("color_palette", {"image": "image", "tile_size": "cell"}, {}),
    "integer": ("integer", {"value": "value"}, {}), "float": ("float", {"value": "value"}, {}),
    "string": ("string", {"value": "value"}, {}), "boolean": ("boolean", {"value": "value"}, {}),
    "rand_int": ("random_int", {"low": "low", "high": "high"}, {}),
    "collect": ("collect", {"item": "item"}, {}), "iterate": ("iterate", {"collection": "collection"}, {}),
}
# InvokeAI's guidance nodes feed denoise_latents' control / t2i_adapter / ip_adapter inputs (one, or a
# collect of several); ours sit in front of it, on the conditioning (ControlNet, T2I-Adapter) or on
# the UNet pin (IP-Adapter).  type -> (denoise input, model field, weight field)
STEERING = {"controlnet": ("control", "control_model", "control_weight"),
            "t2i_adapter": ("t2i_adapter", "t2i_adapter_model", "weight"),
            "ip_adapter": ("ip_adapter", "ip_adapter_model", "weight")}
# clip_vision_model choices (InvokeAI 4+) -> the encoders' names in InvokeAI's model manager
CLIP_VISION = {"ViT-H": "ip_adapter_sd_image_encoder", "ViT-G": "ip_adapter_sdxl_image_encoder",
               "ViT-L": "clip-vit-large-patch14"}
METADATA = {"core_metadata", "metadata", "metadata_item", "merge_metadata", "metadata_to_string"}
# nodes whose output is one of their inputs here (InvokeAI's denoise mask is the mask image for us)
PASS_THROUGH = {"create_denoise_mask": ("mask", "denoise_mask"), "create_gradient_mask": ("mask", "denoise_mask")}


def is_workflow(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("nodes"), list) and isinstance(data.get("edges"), list)
            and all(isinstance(n, dict) and isinstance(n.get("data"), dict) for n in data["nodes"]))


def is_graph(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), dict) and isinstance(data.get("edges"), list)


def read_workflow(data: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, str]]]:
    nodes: dict[str, dict[str, Any]] = {}
    for raw in data["nodes"]:
        body = raw["data"]
        if raw.get("type") == "notes":
            nodes[str(raw.get("id"))] = {"type": "<note>", "values": {"text": body.get("notes", "")},
                                         "pos": _pos(raw.get("position"))}
            continue
        inputs = body.get("inputs") or {}
        values = {k: v.get("value") for k, v in inputs.items() if isinstance(v, dict) and "value" in v}
        nodes[str(body.get("id", raw.get("id")))] = {"type": str(body.get("type")), "values": values,
                                                     "pos": _pos(raw.get("position")), "label": body.get("label")}
    edges = [(str(e["source"]), str(e["sourceHandle"]), str(e["target"]), str(e["targetHandle"]))
             for e in data["edges"] if isinstance(e, dict) and e.get("type", "default") != "collapsed"
             and all(k in e for k in ("source", "sourceHandle", "target", "targetHandle"))]
    return nodes, edges


def read_graph(data: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, str]]]:
    nodes = {str(k): {"type": str(v.get("type")), "values": {f: x for f, x in v.items() if f not in ("id", "type", "is_intermediate", "use_cache")},
                      "pos": None} for k, v in data["nodes"].items() if isinstance(v, dict)}
    edges = []
    for e in data["edges"]:
        if isinstance(e, dict) and isinstance(e.get("source"), dict) and isinstance(e.get("destination"), dict):
            edges.append((str(e["source"].get("node_id")), str(e["source"].get("field")),
                          str(e["destination"].get("node_id")), str(e["destination"].get("field"))))
    return nodes, edges


def _pos(position: Any) -> list[float] | None:
    if isinstance(position, dict) and "x" in position:
        return [float(position.get("x", 0)), float(position.get("y", 0))]
    return None


def _model_ref(value: Any) -> tuple[str, list[str]]:
    """(name, hashes) of a model field: v4+ {key, hash, name, base, type}, v3 {model_name, base_model}."""
    if isinstance(value, dict):
        name = value.get("name") or value.get("model_name") or ""
        digest = str(value.get("hash") or "")
        return str(name), [digest.split(":", 1)[1]] if digest.startswith("sha256:") else []
    return (str(value), []) if value else ("", [])


def convert(nodes: dict[str, dict[str, Any]], edges: list[tuple[str, str, str, str]], report: ImportReport,
            catalog: ModelCatalog, folder: Path | None) -> ImportResult:
    b = GraphBuilder(report)
    report.total = len(nodes)
    ours: dict[str, str] = {}  # their id -> our id
    passed: dict[str, tuple[str, str]] = {}  # their (id) of a pass-through node -> the edge source it passes
    steering: dict[str, dict[str, Any]] = {}  # their guidance node -> what _steer builds of it
    incoming: dict[str, dict[str, tuple[str, str]]] = {}
    for src, sf, dst, df in edges:
        incoming.setdefault(dst, {})[df] = (src, sf)
    for node_id, node in nodes.items():
        kind, values, source = node["type"], node["values"], f"{node_id} ({node['type']})"
        if kind == "<note>":
            b.add("note", values, node_id, source, node["pos"])
            report.imported.append(source)
            continue
        if kind in METADATA:
            report.unmapped_node(node_id, kind, "metadata only: nothing to run")
            continue
        if kind in PASS_THROUGH:
            field = PASS_THROUGH[kind][0]
            if field in incoming.get(node_id, {}):
                passed[node_id] = incoming[node_id][field]
            report.notes.append(f"{source}: the mask image is used as the denoise mask (white is redrawn)")
            report.imported.append(source)
            continue
        if kind in STEERING:
            if "mask" in incoming.get(node_id, {}):
                report.notes.append(f"{source}: its mask is not carried over (it applies everywhere)")
            steering[node_id] = _steering(b, node_id, node, report, catalog, folder, "image" in incoming.get(node_id, {}))
            report.imported.append(source)
            continue
        if kind == "collect" and _collects_steering(nodes, edges, node_id):
            report.imported.append(source)
            continue
        entry = TABLE.get(kind)
        if entry is None:
            report.unmapped_node(node_id, kind, "custom node or no equivalent here")
            continue
        our_type, fields, _ = entry
        mapped = {fields[k]: v for k, v in values.items() if k in fields and v is not None and k not in incoming.get(node_id, {})}
        mapped.update(_special(kind, values, report, catalog, folder))
        ours[node_id] = b.add(our_type, mapped, node_id, source, node["pos"])
        report.imported.append(source)
        if kind == "denoise_latents" and "latents" not in incoming.get(node_id, {}):
            _empty_latents(b, nodes, incoming, node_id, ours[node_id], source, node["pos"])

    def origin(src: str, field: str) -> tuple[str, str] | None:
        hops = 0
        while src in passed and hops < 64:
            src, field = passed[src]
            hops += 1
        if src not in ours:
            return None
        return ours[src], TABLE[nodes[src]["type"]][2].get(field, field)

    linked = _steer(b, nodes, edges, ours, steering, origin)
    for src, sf, dst, df in edges:
        if dst not in ours or (dst, df) in linked or (found := origin(src, sf)) is None:
            continue
        to_field = TABLE[nodes[dst]["type"]][1].get(df)
        if to_field is not None:
            b.link(found[0], found[1], ours[dst], to_field)
    return b.finish()


def _collects_steering(nodes: dict[str, dict[str, Any]], edges: list[tuple[str, str, str, str]], node_id: str) -> bool:
    items = [src for src, _, dst, _ in edges if dst == node_id]
    return bool(items) and all(nodes.get(src, {}).get("type") in STEERING for src in items)


def _weight(value: Any, report: ImportReport, source: str) -> float:
    if isinstance(value, list):  # a weight per step
        report.notes.append(f"{source}: a weight per step is not carried over: the first ({value[0] if value else 1}) is used")
        value = value[0] if value else 1.0
    return float(1.0 if value is None else value)


def _steering(b: GraphBuilder, node_id: str, node: dict[str, Any], report: ImportReport, catalog: ModelCatalog,
              folder: Path | None, linked_image: bool) -> dict[str, Any]:
    """A guidance node's loader and image (added now, where it stood) and its apply node's values
    (added per denoise_latents it feeds, by _steer)."""
    kind, values, source = node["type"], node["values"], f"{node_id} ({node['type']})"
    entry: dict[str, Any] = {}
    if not linked_image and isinstance(values.get("image"), dict):  # a gallery image named in the node (canvas graphs)
        path = _special("image", values, report, catalog, folder)
        entry["image"] = (b.add("load_image", path, node_id + "-image", source, node["pos"]), "image")
    _, model_field, weight_field = STEERING[kind]
    name, hashes = _model_ref(values.get(model_field))
    model = model_value(catalog.match(report, kind, name, hashes), name)
    apply = {"start_percent": float(values.get("begin_step_percent", 0.0)),
             "end_percent": float(values.get("end_step_percent", 1.0))}
    weight = _weight(values.get(weight_field, 1.0), report, source)
    for setting, usual in (("control_mode", "balanced"), ("resize_mode", "just_resize"), ("method", "full")):
        if values.get(setting, usual) != usual:
            report.notes.append(f"{source}: {setting} '{values[setting]}' is not carried over ({usual} is used)")
    if kind == "ip_adapter":
        return {**entry, "type": "ip_adapter", "values": {**apply, "weight": weight, "ip_adapter_model": model,
                                                          "clip_vision_model": _clip_vision(values, report, catalog)}}
    loader, pin, apply_type = CONTROLS[kind]
    loader_id = b.add(loader, {"model": model}, node_id + "-model", source, node["pos"])
    return {**entry, "type": apply_type, "values": {**apply, "strength": weight}, "loader": (loader_id, pin)}


def _clip_vision(values: dict[str, Any], report: ImportReport, catalog: ModelCatalog) -> str:
    name = str(values.get("clip_vision_model") or "ViT-H")  # InvokeAI 4+ names the encoder by architecture
    return model_value(catalog.match(report, "clip_vision", CLIP_VISION.get(name, name), sole=True), name)


def _steer(b: GraphBuilder, nodes: dict[str, dict[str, Any]], edges: list[tuple[str, str, str, str]], ours: dict[str, str],
           steering: dict[str, dict[str, Any]], origin: Callable[[str, str], tuple[str, str] | None]) -> set[tuple[str, str]]:
    """Chains the guidance feeding each denoise_latents in front of it; returns the (node, input)
    edges linked here."""
    linked: set[tuple[str, str]] = set()
    for node_id in [n for n in ours if nodes[n]["type"] == "denoise_latents"]:
        into = {df: (src, sf) for src, sf, dst, df in edges if dst == node_id}
        feeding: dict[str, list[str]] = {}
        for field in ("control", "t2i_adapter", "ip_adapter"):
            if field in into:
                src = into[field][0]
                items = [s for s, _, d, _ in edges if d == src] if nodes.get(src, {}).get("type") == "collect" else [src]
                feeding[field] = [s for s in items if s in steering]
        chains = [((("positive_conditioning", "positive"), ("negative_conditioning", "negative")),
                   feeding.get("control", []) + feeding.get("t2i_adapter", [])),
                  ((("unet", "unet"),), feeding.get("ip_adapter", []))]
        for pins, guides in chains:
            if not guides:
                continue
            ends = {ours_field: into.get(theirs) and origin(*into[theirs]) for theirs, ours_field in pins}
            for guide in guides:
                entry, source = steering[guide], f"{guide} ({nodes[guide]['type']})"
                node = b.add(entry["type"], entry["values"], guide, source, nodes[guide]["pos"])
                image = next((origin(s, sf) for s, sf, d, df in edges if d == guide and df == "image"), entry.get("image"))
                refs = [(image, "image"), *((end, field) for field, end in ends.items())]
                if "loader" in entry:  # (loader node, pin): the same pin on the apply node
                    refs.append((entry["loader"], entry["loader"][1]))
                for ref, to in refs:
                    if ref:
                        b.link(*ref, node, to)
                ends = {field: (node, field) for field in ends}
            for theirs, ours_field in pins:
                if ends[ours_field]:
                    b.link(*ends[ours_field], ours[node_id], ours_field)
                linked.add((node_id, theirs))
    return linked


def _special(kind: str, values: dict[str, Any], report: ImportReport, catalog: ModelCatalog,
             folder: Path | None) -> dict[str, Any]:
    """Values that are not a plain rename: models, schedulers, images, LoRA weights, seeds."""
    if kind in ("main_model_loader", "sdxl_model_loader", "sdxl_refiner_model_loader"):
        name, hashes = _model_ref(values.get("model"))
        return {"model": model_value(catalog.match(report, "main", name, hashes), name)}
    if kind == "vae_loader":
        name, hashes = _model_ref(values.get("vae_model"))
        return {"vae_model": model_value(catalog.match(report, "vae", name, hashes), name)}
    if kind in ("lora_loader", "sdxl_lora_loader"):
        name, hashes = _model_ref(values.get("lora"))
        weight = float(values.get("weight", 0.75))
        return {"lora": model_value(catalog.match(report, "lora", name, hashes), name), "unet_weight": weight,
                "clip_weight": weight}
    if kind == "esrgan":
        name, _ = _model_ref(values.get("model_name"))
        return {"model": model_value(catalog.match(report, "upscaler", name), name)}
    if kind == "denoise_latents":
        scheduler = str(values.get("scheduler", "euler"))
        base = scheduler[:-2] if scheduler.endswith("_k") else scheduler
        cfg = values.get("cfg_scale", 7.5)
        extra = sampler_values(report, _SAMPLER_OF.get(base), "karras" if scheduler.endswith("_k") else "normal", scheduler)
        return {**extra, "cfg_scale": float(cfg[0] if isinstance(cfg, list) and cfg else cfg)}
    if kind == "noise":
        return {"seed": int(values.get("seed", 0)) % (SEED_MAX + 1)}
    if kind == "image":
        name = str((values.get("image") or {}).get("image_name", "")) if isinstance(values.get("image"), dict) else ""
        if folder is not None and name and (folder / name).is_file():
            return {"path": str(folder / name)}
        report.notes.append(f"image {name!r} is in InvokeAI's gallery, not beside the imported file: pick it in load_image")
        return {"path": name}
    return {}


def _empty_latents(b: GraphBuilder, nodes: dict[str, dict[str, Any]], incoming: dict[str, dict[str, tuple[str, str]]],
                   node_id: str, our_id: str, source: str, pos: Any) -> None:
    """InvokeAI's txt2img denoise has noise and no latents; ours starts from empty latents of that size."""
    noise = incoming.get(node_id, {}).get("noise")
    values = nodes.get(noise[0], {}).get("values", {}) if noise else {}
    empty = b.add("empty_latent", {"width": int(values.get("width", 512)) // 8 * 8,
                                   "height": int(values.get("height", 512)) // 8 * 8}, node_id + "-empty", source, pos)
    b.link(empty, "latents", our_id, "latents")

