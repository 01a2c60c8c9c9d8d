"""Importing ComfyUI, AUTOMATIC1111 and InvokeAI graphs (tests/samples/import/, written by hand from
the formats' definitions): each sample imports, validates and runs on tiny random-weight models
written under the names the samples use; unmapped nodes and missing models are reported; bad
files are refused naming the file and the reason; our PNGs carry A1111 parameters that read back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from services.config import Settings
from services.container import Services
from services.importers import ImportFormatError, ModelCatalog, detect, import_data
from services.importers.a1111 import parameters_from_graph, parse
from services.invoker import Invoker
from tests.test_cli_terminal import run_app

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SAMPLES = Path(__file__).parent / "samples" / "import"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from services.models import demo

    models = tmp_path_factory.mktemp("import") / "models"
    demo.write_tiny_sd1_diffusers(models / "v1-5-pruned-emaonly")
    demo.write_tiny_sdxl_diffusers(models / "sd_xl_base_1.0")
    demo.write_tiny_sdxl_refiner_diffusers(models / "sd_xl_refiner_1.0")
    sd1 = demo.tiny_sd1_modules()
    demo.write_tiny_lora(models / "loras" / "add_detail.safetensors", {"unet": sd1["unet"], "text_encoder": sd1["text_encoder"]})
    demo.write_tiny_sd1_single_file(models / "checkpoints" / "dreamshaper_8.safetensors", seed=3)
    # control models under the names the samples use, for v1-5-pruned-emaonly's UNet
    unet = demo.tiny_unet()
    demo.write_tiny_controlnet(models / "controlnet" / "control_v11p_sd15_canny.safetensors", demo.tiny_controlnet(unet), "ldm")
    demo.write_tiny_t2i_adapter(models / "t2i" / "t2iadapter_canny_sd15v2.safetensors", demo.tiny_t2i_adapter(), "original")
    demo.write_tiny_clip_vision(models / "ip" / "image_encoder")
    demo.write_tiny_ip_adapter(models / "ip" / "ip-adapter_sd15.safetensors", unet)
    return models


@pytest.fixture(scope="module")
def invoker(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("import-root")
    settings = Settings(data_dir=root, config_dir=root / "config", models_dir=models_dir, outputs_dir=root / "outputs",
                        sessions_dir=root / "sessions", plugins_dir=root / "plugins", device="cpu")
    invoker = Invoker(Services.local(settings))
    yield invoker
    invoker.shutdown()


def import_sample(invoker, name: str, fmt: str | None = None):
    path = SAMPLES / name
    return invoker.import_graph(path.read_bytes(), str(path), fmt)


def run(invoker, session):
    invoker.invoke(session)
    assert invoker.wait(session.id, 300)
    failed = {n: r.error for n, rows in session.results.items() for r in rows if r.state not in ("completed", "cached")}
    assert not failed and session.is_complete(), failed
    return session


def output_image(invoker, session, node_type: str = "vae_decode") -> np.ndarray:
    node_id = [n for n in session.graph.order if session.graph.nodes[n].type == node_type][-1]
    return np.asarray(invoker.images.get(session.results[node_id][0].outputs["image"]["image_name"]))


# sample -> (format, nodes of ours expected, unmapped source types)
RUNNABLE = {
    "comfy_api_txt2img.json": ("comfyui-api", {"main_model_loader": 1, "prompt": 2, "denoise_latents": 1}, set()),
    "comfy_ui_lora_hires.json": ("comfyui-workflow", {"lora_loader": 1, "clip_skip": 1, "denoise_latents": 2,
                                                      "latent_upscale": 1, "note": 1}, set()),
    "comfy_api_img2img.json": ("comfyui-api", {"load_image": 1, "resize": 1, "vae_encode": 1}, set()),
    "comfy_api_inpaint.json": ("comfyui-api", {"mask_from_alpha": 1, "mask_grow": 1, "set_latent_noise_mask": 1}, set()),
    "comfy_api_sdxl_refiner.json": ("comfyui-api", {"sdxl_prompt": 4, "denoise_latents": 2, "main_model_loader": 2}, set()),
    "comfy_prompt_only_sdxl.png": ("comfyui-api", {"sdxl_prompt": 4}, set()),
    "comfy_workflow_and_prompt.png": ("comfyui-workflow", {"lora_loader": 1, "denoise_latents": 2}, set()),
    "comfy_ui_controlnet.json": ("comfyui-workflow", {"canny": 1, "controlnet_loader": 1, "controlnet_apply": 1}, set()),
    "comfy_api_t2i_adapter.json": ("comfyui-api", {"canny": 1, "t2i_adapter_loader": 1, "t2i_adapter_apply": 1}, set()),
    "comfy_api_regions.json": ("comfyui-api", {"conditioning_set_area": 1, "conditioning_set_mask": 1,
                                               "conditioning_regions": 2, "prompt": 4}, set()),
    "comfy_ui_custom_nodes.json": ("comfyui-workflow", {"denoise_latents": 1, "show_image": 1},
                                   {"ADE_AnimateDiffLoaderWithContext", "CR Seed", "Image Save", "SaveImage"}),
    "a1111_txt2img_lora.png": ("a1111", {"lora_loader": 1, "clip_skip": 1, "prompt": 2}, set()),
    "a1111_hires.txt": ("a1111", {"denoise_latents": 2, "latent_upscale": 1, "clip_skip": 1}, set()),
    "a1111_img2img.png": ("a1111", {"load_image": 1, "vae_encode": 1}, set()),
    "a1111_inpaint.png": ("a1111", {"set_latent_noise_mask": 1, "mask_blur": 1}, set()),
    "a1111_sdxl_refiner.png": ("a1111", {"sdxl_prompt": 4, "denoise_latents": 2}, set()),
    "a1111_controlnet.png": ("a1111", {"load_image": 1, "canny": 1, "controlnet_apply": 1}, set()),
    "a1111_controlnet_units.png": ("a1111", {"load_image": 1, "canny": 1, "color_palette": 1, "controlnet_apply": 1,
                                             "t2i_adapter_apply": 1}, set()),
    "forge_custom_extensions.txt": ("a1111", {"lora_loader": 1}, {"setting", "hypernetwork"}),
    "invokeai_workflow_txt2img_lora.json": ("invokeai-workflow", {"lora_loader": 1, "noise": 1, "empty_latent": 1, "note": 1},
                                            {"core_metadata"}),
    "invokeai_workflow_txt2img.png": ("invokeai-workflow", {"lora_loader": 1}, {"core_metadata"}),
    "invokeai_workflow_sdxl_refiner_hires.json": ("invokeai-workflow", {"denoise_latents": 3, "latent_upscale": 1}, set()),
    "invokeai_graph_img2img.png": ("invokeai-graph", {"load_image": 1, "resize": 1, "vae_encode": 1}, {"core_metadata"}),
    "invokeai_graph_inpaint_controlnet.json": ("invokeai-graph", {"vae_encode": 1, "load_image": 2, "canny": 1,
                                                                  "controlnet_apply": 1}, {"face_identifier"}),
    "invokeai_graph_controls.json": ("invokeai-graph", {"load_image": 2, "canny": 1, "controlnet_loader": 2,
                                                        "controlnet_apply": 2, "t2i_adapter_apply": 1, "ip_adapter": 1}, set()),
}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_each_sample_imports_validates_and_runs_on_the_tiny_models(invoker, name):
    fmt, expected, unmapped = RUNNABLE[name]
    session, report = import_sample(invoker, name)
    assert report.format == fmt
    types = [session.graph.nodes[n].type for n in session.graph.order]
    for node_type, count in expected.items():
        assert types.count(node_type) == count, (node_type, types)
    assert {u["type"] for u in report.unmapped} == unmapped, report.unmapped
    assert not report.missing_models, report.missing_models
    run(invoker, session)
    image = output_image(invoker, session)
    assert image.shape[:2] in ((64, 64), (96, 96)) and np.isfinite(image).all() and image.std() > 0


def test_values_and_positions_follow_the_source(invoker):
    session, report = import_sample(invoker, "comfy_ui_lora_hires.json")
    nodes = {n: session.graph.nodes[n] for n in session.graph.order}
    first, second = nodes["3"].values, nodes["13"].values
    # widgets_values order: seed, control_after_generate, steps, cfg, sampler_name, scheduler, denoise
    assert first | {"seed": 42} == {"steps": 3, "cfg_scale": 7.5, "sampler": "euler_a", "schedule": "normal", "seed": 42}
    assert second["steps"] == 4 and second["denoise_start"] == 0.5 and second["sampler"] == "dpmpp_2m"
    assert second["schedule"] == "karras" and second["seed"] == 42  # the PrimitiveNode's value
    assert nodes["10"].values == {"lora": "loras-add-detail", "unet_weight": 0.8, "clip_weight": 0.6}
    assert nodes["11"].values == {"skip": 1}  # stop_at_clip_layer -2
    assert session.ui["positions"]["4"] == [26.0, 474.0] and session.ui["positions"]["3"] == [1200.0, 190.0]
    assert ("10", "unet", "13", "unet") in {(l.from_node, l.from_field, l.to_node, l.to_field) for l in session.graph.links}
    assert nodes["9"].values == {"filename": "fox"}
    assert {"kind": "main", "reference": "v1-5-pruned-emaonly.safetensors", "model_id": "v1-5-pruned-emaonly"} in report.models
    assert report.summary().startswith("14 of 14 nodes imported from comfy_ui_lora_hires.json")

    a1111, a_report = import_sample(invoker, "a1111_sdxl_refiner.png")
    refine = a1111.graph.nodes["refine"].values
    assert a1111.graph.nodes["denoise"].values["denoise_end"] == 0.6 and refine["denoise_start"] == 0.6
    assert refine["add_noise"] is False and refine["sampler"] == "dpmpp_2m_sde" and refine["schedule"] == "exponential"
    assert {m["model_id"] for m in a_report.models} == {"sd-xl-base-1-0", "sd-xl-refiner-1-0"}


def test_the_same_settings_from_comfyui_and_a1111_draw_the_same_pixels(invoker):
    """comfy_api_txt2img and a1111 text of the same settings: one model, prompt, seed, sampler."""
    session, _ = import_sample(invoker, "comfy_api_txt2img.json")
    values = session.graph.nodes["3"].values
    text = (f"{session.graph.nodes['6'].values['prompt']}\nNegative prompt: {session.graph.nodes['7'].values['prompt']}\n"
            f"Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: {values['seed']}, Size: 64x64, Model: v1-5-pruned-emaonly")
    other, _ = invoker.import_graph(text.encode(), "same.txt")
    a = output_image(invoker, run(invoker, session))
    b = output_image(invoker, run(invoker, other))
    assert np.array_equal(a, b)


def _links(session) -> set[tuple[str, str, str, str]]:
    return {(l.from_node, l.from_field, l.to_node, l.to_field) for l in session.graph.links}


def test_an_imported_controlnet_draws_the_pixels_of_the_same_graph_built_by_hand(invoker):
    from tests.test_diffusion_nodes import run_graph

    session, _ = import_sample(invoker, "comfy_ui_controlnet.json")
    imported = output_image(invoker, run(invoker, session))
    nodes = {"model": {"type": "main_model_loader", "model": "v1-5-pruned-emaonly"},
             "pos": {"type": "prompt", "prompt": "a robot in a field of flowers"}, "neg": {"type": "prompt", "prompt": "lowres"},
             "photo": {"type": "load_image", "path": str(SAMPLES / "input.png")},
             "edges": {"type": "canny", "low_threshold": 102, "high_threshold": 204},  # ComfyUI's 0.4 / 0.8 of 255
             "cn": {"type": "controlnet_loader", "model": "controlnet-control-v11p-sd15-canny"},
             "apply": {"type": "controlnet_apply", "strength": 0.9, "start_percent": 0.0, "end_percent": 0.8},
             "empty": {"type": "empty_latent", "width": 64, "height": 64},
             "denoise": {"type": "denoise_latents", "steps": 3, "cfg_scale": 7.0, "seed": 5, "sampler": "dpmpp_2m",
                         "schedule": "karras"},
             "decode": {"type": "vae_decode"}}
    links = [("model", "clip", "pos", "clip"), ("model", "clip", "neg", "clip"), ("photo", "image", "edges", "image"),
             ("edges", "image", "apply", "image"), ("cn", "control_model", "apply", "control_model"),
             ("pos", "conditioning", "apply", "positive"), ("neg", "conditioning", "apply", "negative"),
             ("apply", "positive", "denoise", "positive"), ("apply", "negative", "denoise", "negative"),
             ("model", "unet", "denoise", "unet"), ("empty", "latents", "denoise", "latents"),
             ("denoise", "latents", "decode", "latents"), ("model", "vae", "decode", "vae")]
    assert np.array_equal(imported, output_image(invoker, run_graph(invoker, nodes, links)))
    nodes["apply"]["strength"] = 0.0  # the control does steer
    assert not np.array_equal(imported, output_image(invoker, run_graph(invoker, nodes, links)))


def test_comfyui_control_loaders_follow_the_model_kind_and_regions_map_onto_ours(invoker):
    session, report = import_sample(invoker, "comfy_api_t2i_adapter.json")
    nodes, links = session.graph.nodes, _links(session)
    assert nodes["6"].type == "t2i_adapter_loader" and nodes["6"].values == {"model": "t2i-t2iadapter-canny-sd15v2"}
    assert nodes["7"].type == "t2i_adapter_apply" and nodes["7"].values["strength"] == 0.7
    assert nodes["5"].values == {"low_threshold": 76, "high_threshold": 178}
    # ControlNetApply steers one conditioning: the positive; the negative goes to the sampler unsteered
    assert {("2", "conditioning", "7", "positive"), ("7", "positive", "9", "positive"),
            ("3", "conditioning", "9", "negative")} <= links
    assert {"kind": "t2i_adapter", "reference": "t2iadapter_canny_sd15v2.safetensors",
            "model_id": "t2i-t2iadapter-canny-sd15v2"} in report.models

    session, report = import_sample(invoker, "comfy_api_regions.json")
    nodes, links = session.graph.nodes, _links(session)
    assert nodes["4"].values == {"x": 32, "y": 32, "width": 64, "height": 64, "strength": 1.2}  # pixels in both
    assert nodes["7"].values == {"strength": 0.8} and nodes["8"].type == nodes["9"].type == "conditioning_regions"
    assert {("2", "conditioning", "9", "first"), ("8", "conditioning", "9", "second"), ("6", "image", "7", "mask")} <= links
    assert any("'mask bounds' is not carried over" in note for note in report.notes)


def test_a1111_controlnet_units_map_module_model_kind_and_weights(invoker):
    session, report = import_sample(invoker, "a1111_controlnet_units.png")
    nodes, links = session.graph.nodes, _links(session)
    assert nodes["canny"].values == {"low_threshold": 60, "high_threshold": 180}  # Threshold A / B
    assert nodes["controlnet_apply"].values == {"strength": 0.6, "start_percent": 0.1, "end_percent": 0.7}
    assert nodes["t2i_adapter_apply"].values == {"strength": 0.5, "start_percent": 0.0, "end_percent": 1.0}
    assert nodes["control_image"].values["path"].endswith("a1111_controlnet_units.png")  # the stand-in
    assert {("control_image", "image", "t2ia_color_grid", "image"), ("t2ia_color_grid", "image", "t2i_adapter_apply", "image"),
            ("controlnet_apply", "positive", "t2i_adapter_apply", "positive"),
            ("t2i_adapter_apply", "negative", "denoise", "negative")} <= links
    assert "ControlNet 0" in report.imported and "ControlNet 1" in report.imported
    assert any("load_image opens the imported image in their place" in note for note in report.notes)
    assert any("Control Mode 'My prompt is more important'" in note for note in report.notes)
    # the units steer: the same text without them draws other pixels
    with Image.open(SAMPLES / "a1111_controlnet_units.png") as image:
        plain = image.text["parameters"].split(", ControlNet 0")[0]
    controlled = output_image(invoker, run(invoker, session))
    other, _ = invoker.import_graph(plain.encode(), "plain.txt")
    assert not np.array_equal(controlled, output_image(invoker, run(invoker, other)))

    text = ("a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model: v1-5-pruned-emaonly, "
            'ControlNet 0: "Module: depth_midas, Model: control_v11f1p_sd15_depth [cfd03158], Weight: 1, Guidance Start: 0, '
            'Guidance End: 1", ControlNet 1: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [6a3f6166], Weight: 1"')
    session, report = invoker.import_graph(text.encode(), "depth.txt")
    assert report.unmapped == [{"id": "ControlNet 1", "type": "ControlNet unit", "reason": "module 'ip-adapter_clip_sd15', "
                                "model 'ip-adapter_sd15': IP-Adapter units are not imported: add an ip_adapter node"}]
    assert session.graph.nodes["controlnet"].values == {"model": "control-v11f1p-sd15-depth"}
    assert report.missing_models == [{"kind": "controlnet", "reference": "control_v11f1p_sd15_depth", "model_id": None}]
    assert any("module 'depth_midas' has no preprocessor here" in note for note in report.notes)


def test_invokeai_guidance_goes_in_front_of_denoise_latents(invoker):
    session, report = import_sample(invoker, "invokeai_graph_controls.json")
    nodes, links = session.graph.nodes, _links(session)
    # the collect of two ControlNets, then the T2I-Adapter, chained on the conditioning; the IP-Adapter on the UNet
    assert {("pos", "conditioning", "cn_edges", "positive"), ("cn_edges", "positive", "cn_photo", "positive"),
            ("cn_photo", "negative", "sketch", "negative"), ("sketch", "positive", "denoise", "positive"),
            ("model", "unet", "style", "unet"), ("style", "unet", "denoise", "unet"), ("edges", "image", "cn_edges", "image"),
            ("cn_photo-image", "image", "cn_photo", "image"), ("photo", "image", "style", "image")} <= links
    assert nodes["cn_edges"].values == {"strength": 0.75, "start_percent": 0.0, "end_percent": 0.8}
    assert nodes["cn_photo"].values["strength"] == 0.5  # the first of its weights per step
    assert nodes["sketch"].values == {"strength": 0.6, "start_percent": 0.0, "end_percent": 0.5}
    assert nodes["style"].values == {"weight": 0.5, "start_percent": 0.0, "end_percent": 1.0,
                                     "ip_adapter_model": "ip-ip-adapter-sd15", "clip_vision_model": "ip-image-encoder"}
    assert nodes["edges"].values == {"low_threshold": 50, "high_threshold": 150}
    assert report.summary().startswith("14 of 14 nodes imported") and not report.missing_models
    assert any("control_mode 'more_control' is not carried over" in note for note in report.notes)


def test_a_model_is_matched_by_its_a1111_hash_computed_once(invoker, models_dir, monkeypatch):
    from services.models import hashes

    path = models_dir / "checkpoints" / "dreamshaper_8.safetensors"
    full = hashes.file_hashes(path)
    assert full["autov1"] == __import__("hashlib").sha256(path.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    calls = []
    real = hashes.file_hashes
    monkeypatch.setattr(hashes, "file_hashes", lambda p: calls.append(p) or real(p))
    for digest in (full["sha256"][:10], full["autov1"]):
        text = f"a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: {digest}, Model: renamed"
        session, report = invoker.import_graph(text.encode(), "hash.txt")
        assert session.graph.nodes["model"].values["model"] == "checkpoints-dreamshaper-8", report.models
    assert len(calls) <= 1  # the second import reads the cache (size + mtime unchanged)
    cache = json.loads((Path(invoker.settings.data_dir) / "cache" / "model_hashes.json").read_text())
    assert any(e["hashes"]["sha256"] == full["sha256"] for e in cache.values())


def test_saved_pngs_carry_a1111_parameters_that_read_back(invoker):
    session, _ = import_sample(invoker, "a1111_txt2img_lora.png")
    run(invoker, session)
    decode = session.results["decode"][0].outputs["image"]["image_name"]
    with Image.open(invoker.images.path(decode)) as image:
        text = image.text["parameters"]
        assert "invoke-nodes" in image.text  # our own graph stays beside it
    params = parse(text)
    assert params["Prompt"] == "a watercolor of a lighthouse, (stormy sea:1.3) <lora:loras-add-detail:0.7>"
    assert params["Negative prompt"] == "blurry, text"
    assert {k: params[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model")} == {
        "Steps": "3", "Sampler": "DPM++ 2M Karras", "CFG scale": "7.5", "Seed": "3340219581", "Size": "64x64",
        "Model": "v1-5-pruned-emaonly"}
    # our importer reads it back (the PNG holds our graph too: the a1111 format is asked for)
    again, report = invoker.import_graph(invoker.images.path(decode).read_bytes(), "ours.png", "a1111")
    assert report.format == "a1111" and not report.missing_models
    assert again.graph.nodes["denoise"].values == session.graph.nodes["denoise"].values
    assert again.graph.nodes["lora"].values == session.graph.nodes["lora"].values
    assert detect(invoker.images.path(decode).read_bytes()) is None  # ours: opened, not imported
    assert parameters_from_graph({"nodes": [{"id": "a", "type": "noise_image"}], "links": []}, "a") is None


def _png(chunks: dict[str, str], size=(8, 8)) -> bytes:
    import io

    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"{\"3\": {\"class_type\": ", "not valid JSON"),
    (_png({}), "this PNG carries no ComfyUI, AUTOMATIC1111 or InvokeAI workflow"),
    (_png({"prompt": "{\"3\": {\"class_type\": \"KSampler\""}), "bad.png (prompt chunk): not valid JSON"),
    (_png({"parameters": "a cat\nSteps: 20, Sampler: Euler"})[:60], "not an image Pillow can read"),
    (b"\xff\xfe\x00garbage", "neither a PNG nor UTF-8 text"),
    (b"just some notes", "this file holds no ComfyUI"),
    (json.dumps({"nodes": [], "links": 3}).encode(), "this file holds no"),
    (b"[" * 100 + b"]" * 100, "nested deeper than"),
    (json.dumps({"1": {"class_type": "KSampler", "inputs": 5}}).encode(), "malformed comfyui data"),
])
def test_malformed_imports_name_the_file_and_the_reason(invoker, data, reason):
    with pytest.raises(ImportFormatError) as caught:
        invoker.import_graph(data, "/somewhere/bad.png")
    assert str(caught.value).startswith("bad.png") and reason in str(caught.value), str(caught.value)


def test_a_huge_png_header_is_refused_before_decoding(tmp_path):
    from tests.hostile import bomb_png

    with pytest.raises(ImportFormatError, match=r"bomb\.png: .*pixels"):
        import_data(bomb_png(), "bomb.png", ModelCatalog([]))


def test_cli_run_imports_by_content(invoker, models_dir, tmp_path):
    target = tmp_path / "flow.json"
    shutil.copy(SAMPLES / "comfy_api_txt2img.json", target)
    result = run_app(tmp_path / "user", "run", str(target), "--out", str(tmp_path / "out"),
                     INVOKE_NODES_MODELS=str(models_dir))
    assert result.returncode == 0, result.stderr
    assert "imported: 7 of 7 nodes imported from flow.json (comfyui-api)" in result.stderr
    assert [Path(p).name for p in result.stdout.split()] == ["9-save_image.png"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [')
    refused = run_app(tmp_path / "user", "run", str(bad))
    assert refused.returncode == 2 and "bad.json" in refused.stderr


def test_api_import_returns_the_session_and_the_report(invoker):
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    with TestClient(create_app(invoker)) as client:
        files = {"file": ("workflow.json", (SAMPLES / "comfy_ui_custom_nodes.json").read_bytes(), "application/json")}
        response = client.post("/api/v1/sessions/import", files=files)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["report"]["format"] == "comfyui-workflow" and body["report"]["total"] == 11
        assert {"id": "5", "type": "CR Seed", "reason": "custom node"} in body["report"]["unmapped"]
        assert "7 of 11 nodes imported" in body["report"]["summary"]
        assert client.get(f"/api/v1/sessions/{body['session']['id']}").status_code == 200
        refused = client.post("/api/v1/sessions/import", files={"file": ("x.png", _png({}), "image/png")})
        assert refused.status_code == 400 and refused.json()["message"].startswith("x.png: this PNG carries no")


def test_canvas_import_shows_the_report_before_running(invoker, tmp_path):
    from app.canvas.controller import CanvasController

    ctl = CanvasController(invoker)
    try:
        for name in ("invokeai_workflow_txt2img_lora.json", "input.png"):
            shutil.copy(SAMPLES / name, tmp_path / name)
        assert ctl.drop_file(tmp_path / "invokeai_workflow_txt2img_lora.json")
        assert ctl.import_report is not None and ctl.import_report.format == "invokeai-workflow"
        assert "core_metadata #meta (metadata only" in ctl.import_report.summary()
        assert ctl.message.startswith("Imported invokeai_workflow_txt2img_lora.json: 8 of 9 nodes carried over")
        assert ctl.position("denoise") == [800.0, 0.0]
        assert not ctl.is_running and all(ctl.session.node_state(n) == "pending" for n in ctl.graph.order)
        assert not ctl.import_file(tmp_path / "input.png")  # a PNG with no workflow: refused, graph kept
        assert "input.png" in ctl.message and "carries no" in ctl.message
        assert ctl.import_report.format == "invokeai-workflow" and "denoise" in ctl.graph.nodes
    finally:
        ctl.close()
