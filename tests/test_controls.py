"""ControlNet, T2I-Adapter and IP-Adapter on tiny random-weight models written as real files (every
layout the scanner reads), loaded through the model manager, checked against diffusers' own
pipelines and run as graphs on both executors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.container import IN_PROCESS, WORKER, Services
from services.invoker import Invoker
from tests.test_diffusion_nodes import _settings, image_of, run_graph, txt2img_graph

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    from services.models import demo

    models = tmp_path_factory.mktemp("controls") / "models"
    demo.write_tiny_sd1_diffusers(models / "tiny-sd1")
    demo.write_tiny_sdxl_diffusers(models / "tiny-sdxl")
    unet = demo.tiny_unet()  # tiny-sd1's UNet
    controlnet = demo.tiny_controlnet(unet)
    demo.write_tiny_controlnet(models / "controlnet" / "folder", controlnet)
    demo.write_tiny_controlnet(models / "controlnet" / "ldm.safetensors", controlnet, "ldm")
    demo.write_tiny_controlnet(models / "controlnet" / "diffusers-file.safetensors", controlnet, "diffusers-file")
    demo.write_tiny_controlnet(models / "controlnet" / "other.safetensors", demo.tiny_controlnet(unet, seed=51), "ldm")
    sdxl_unet = StableDiffusionXLPipeline.from_pretrained(models / "tiny-sdxl").unet
    demo.write_tiny_controlnet(models / "controlnet" / "xl", demo.tiny_controlnet(sdxl_unet, seed=52))
    adapter = demo.tiny_t2i_adapter()
    demo.write_tiny_t2i_adapter(models / "t2i" / "folder", adapter)
    demo.write_tiny_t2i_adapter(models / "t2i" / "diffusers-file.safetensors", adapter, "diffusers-file")
    demo.write_tiny_t2i_adapter(models / "t2i" / "original.safetensors", adapter, "original")
    demo.write_tiny_clip_vision(models / "ip" / "image_encoder")
    demo.write_tiny_ip_adapter(models / "ip" / "ip-adapter.safetensors", unet)
    demo.write_tiny_ip_adapter(models / "ip" / "ip-adapter_sd15.bin", unet)
    demo.write_tiny_ip_adapter(models / "ip" / "ip-adapter_xl.safetensors", sdxl_unet, seed=81)
    return models


@pytest.fixture(scope="module")
def manager(models_dir, tmp_path_factory):
    from services.models.manager import LocalModelManager

    return LocalModelManager(_settings(tmp_path_factory.mktemp("manager"), models_dir))


def control_image(size=64, seed=0) -> Image.Image:
    """Blocky shapes, as an edge or depth map would give, at another size than the generation's."""
    pixels = np.random.default_rng(seed).integers(0, 2, (6, 5, 3), dtype=np.uint8) * 255
    return Image.fromarray(pixels).resize((size + 8, size - 8), Image.Resampling.NEAREST)


# --------------------------------------------------------------------------------------------
# Files found and read


def test_every_layout_is_found_with_its_kind_and_family_and_reads_the_same_weights(manager):
    kinds = {m.id: (m.kind, m.base) for m in manager.list() if m.kind not in ("main",)}
    assert kinds == {
        "controlnet-folder": ("controlnet", "sd1"), "controlnet-ldm": ("controlnet", "sd1"),
        "controlnet-diffusers-file": ("controlnet", "sd1"), "controlnet-other": ("controlnet", "sd1"),
        "controlnet-xl": ("controlnet", "sdxl"),
        "t2i-folder": ("t2i_adapter", "sd1"), "t2i-diffusers-file": ("t2i_adapter", "sd1"),
        "t2i-original": ("t2i_adapter", "sd1"), "ip-image-encoder": ("clip_vision", None),
        "ip-ip-adapter": ("ip_adapter", None), "ip-ip-adapter-sd15": ("ip_adapter", None),
        "ip-ip-adapter-xl": ("ip_adapter", None)}
    assert manager.unrecognized() == []
    for folder, files in (("controlnet-folder", ("controlnet-ldm", "controlnet-diffusers-file")),
                          ("t2i-folder", ("t2i-diffusers-file", "t2i-original"))):
        expected = manager.load(folder).state_dict()
        for model_id in files:
            got = manager.load(model_id).state_dict()
            assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected), model_id
    bin_file, safetensors = manager.load("ip-ip-adapter-sd15"), manager.load("ip-ip-adapter")
    for part in ("image_proj", "ip_adapter"):
        assert all(torch.equal(v, safetensors.state[part][k]) for k, v in bin_file.state[part].items())


def test_model_lists_reach_the_cli_and_the_api(manager, models_dir, tmp_path):
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    services = Services.local(_settings(tmp_path, models_dir))
    invoker = Invoker(services)
    try:
        client = TestClient(create_app(invoker))
        for kind in ("controlnet", "t2i_adapter", "ip_adapter", "clip_vision"):
            items = client.get("/api/v1/models/", params={"kind": kind}).json()["items"]
            assert {m["id"] for m in items} == {m.id for m in manager.list(kind)}
        from app.cli import Shell
        from nodes.base import REGISTRY

        shell = Shell(invoker, open_viewer=False)
        assert shell._model_ids(REGISTRY["controlnet_loader"].inputs()["model"].model_kind) == \
            ["controlnet-diffusers-file", "controlnet-folder", "controlnet-ldm", "controlnet-other", "controlnet-xl"]
    finally:
        invoker.shutdown()


# --------------------------------------------------------------------------------------------
# The loop against diffusers' pipelines


def _conditioning(manager, model_id="tiny-sd1"):
    from nodes.core.conditioning import PromptEncoder

    encoder = PromptEncoder(manager.load(model_id), "sd1")
    return encoder.encode("a red cube"), encoder.encode("")


def _ours(manager, controls, positive, negative, noise, steps=4):
    from nodes.core.controls import attach, controls_of
    from nodes.core.diffusion import DenoiseRequest, denoise

    pipe = manager.load("tiny-sd1")
    for control in controls:
        positive, negative = attach(positive, control), attach(negative, control)
    loaded = [(c, rows, manager.load(c["model_id"])) for c, rows in controls_of(positive, negative)]
    request = DenoiseRequest(positive=positive, negative=negative, latents=torch.zeros_like(noise), noise=noise, steps=steps,
                             cfg_scale=7.5, sampler="euler", controls=loaded)
    return denoise(pipe.unet, "sd1", pipe.scheduler.config, request, lambda *a: None)


def test_controlnet_matches_diffusers_controlnet_pipeline(manager):
    from diffusers import StableDiffusionControlNetPipeline

    from nodes.core.controls import make_control
    from nodes.core.diffusion import make_noise, make_scheduler

    pipe, controlnet = manager.load("tiny-sd1"), manager.load("controlnet-ldm")
    positive, negative = _conditioning(manager)
    noise, image = make_noise(3, (1, 4, 8, 8)), control_image()
    ours = _ours(manager, [make_control("controlnet", "controlnet-ldm", image, 0.8, 0.25, 1.0)], positive, negative, noise)
    reference = StableDiffusionControlNetPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"},
                                                  controlnet=controlnet)
    reference.scheduler = make_scheduler(pipe.scheduler.config, "euler")
    with torch.inference_mode():
        expected = reference(prompt_embeds=positive["embeds"], negative_prompt_embeds=negative["embeds"], image=image,
                             height=64, width=64, num_inference_steps=4, guidance_scale=7.5, latents=noise,
                             controlnet_conditioning_scale=0.8, control_guidance_start=0.25, output_type="latent").images
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, _ours(manager, [], positive, negative, noise), atol=1e-3)


def test_t2i_adapter_matches_diffusers_adapter_pipeline(manager):
    from diffusers import StableDiffusionAdapterPipeline

    from nodes.core.controls import make_control
    from nodes.core.diffusion import make_noise, make_scheduler

    pipe, adapter = manager.load("tiny-sd1"), manager.load("t2i-original")
    positive, negative = _conditioning(manager)
    noise, image = make_noise(4, (1, 4, 8, 8)), control_image(seed=1)
    ours = _ours(manager, [make_control("t2i_adapter", "t2i-original", image, 0.7, 0.0, 1.0)], positive, negative, noise)
    reference = StableDiffusionAdapterPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"},
                                               adapter=adapter)
    reference.scheduler = make_scheduler(pipe.scheduler.config, "euler")
    with torch.inference_mode():
        expected = reference(prompt_embeds=positive["embeds"], negative_prompt_embeds=negative["embeds"], image=image,
                             height=64, width=64, num_inference_steps=4, guidance_scale=7.5, latents=noise,
                             adapter_conditioning_scale=0.7, output_type="latent").images
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_controlnet_residuals_scale_with_strength_a_stack_adds_them_and_steps_out_of_range_get_zeros(manager):
    from nodes.core.controls import Steering, make_control

    model = manager.load("controlnet-ldm")
    latents = torch.zeros(1, 4, 8, 8)
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embeds, t = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1)), torch.tensor(500)

    def residuals(*controls, rows=(True, True), step=0):
        steering = Steering.of([(c, rows, model) for c in controls], None, True, latents, (0, 4, 4), "off", None)
        with torch.inference_mode():
            extra = steering.step(step, sample, t, embeds, None, None)
        return [*extra["down_block_additional_residuals"], extra["mid_block_additional_residual"]]

    full, half = (make_control("controlnet", "controlnet-ldm", control_image(), s, 0, 0.5) for s in (1.0, 0.5))
    with torch.inference_mode():
        real = [r.shape for r in model(torch.cat([sample] * 2), t, embeds, torch.zeros(2, 3, 64, 64), return_dict=False)[0]]
    assert [r.shape for r in residuals(full)[:-1]] == real
    for a, b, c, d, late in zip(residuals(full), residuals(half), residuals(full, half), residuals(full, rows=(False, True)),
                                residuals(full, step=3)):
        torch.testing.assert_close(b, a * 0.5)
        torch.testing.assert_close(c, a * 1.5)
        assert torch.equal(d[0], torch.zeros_like(d[0])) and torch.equal(d[1], a[1])  # rows: negative, positive
        assert torch.equal(late, torch.zeros_like(a))  # the last quarter lies outside 0..0.5
    assert a.abs().sum() > 0
    assert Steering.of([(full, (True, True), model)], None, True, latents, (2, 2, 4), "off", None) is None  # a later pass


# --------------------------------------------------------------------------------------------
# Graphs, on both executors


@pytest.fixture(scope="module", params=[IN_PROCESS, WORKER])
def services(models_dir, tmp_path_factory, request) -> Services:
    return Services.local(_settings(tmp_path_factory.mktemp("graphs"), models_dir), executor=request.param)


@pytest.fixture(scope="module")
def invoker(services):
    invoker = Invoker(services)
    yield invoker
    invoker.shutdown()


@pytest.fixture(scope="module")
def image_ref(services):
    return {"image_name": services.images.save(control_image()).image_name}


def controlled_graph(image_ref, controls=(), ip=(), model="tiny-sd1", prompt="prompt", steps=4, denoise_end=1.0):
    """txt2img_graph with control apply nodes between the prompts and denoise (each: (kind, model, values)),
    and IP-Adapters between the loader and denoise."""
    nodes, links = txt2img_graph(model=model, prompt=prompt, steps=steps)
    nodes["denoise"]["denoise_end"] = denoise_end
    links = [link for link in links if link[2] != "denoise" or link[3] not in ("positive", "negative", "unet")]
    positive, negative = ("pos", "conditioning"), ("neg", "conditioning")
    for n, (kind, model_id, values) in enumerate(controls):
        loader, pin = ("controlnet_loader", "control_model") if kind == "controlnet" else ("t2i_adapter_loader", "t2i_adapter")
        nodes[f"load{n}"] = {"type": loader, "model": model_id}
        nodes[f"apply{n}"] = {"type": f"{kind}_apply", "image": image_ref, **values}
        links += [(f"load{n}", pin, f"apply{n}", pin), (*positive, f"apply{n}", "positive"), (*negative, f"apply{n}", "negative")]
        positive, negative = (f"apply{n}", "positive"), (f"apply{n}", "negative")
    unet = ("model", "unet")
    for n, (adapter, values) in enumerate(ip):
        nodes[f"ip{n}"] = {"type": "ip_adapter", "ip_adapter_model": adapter, "clip_vision_model": "ip-image-encoder",
                           "image": image_ref, **values}
        links.append((*unet, f"ip{n}", "unet"))
        unet = (f"ip{n}", "unet")
    links += [(*positive, "denoise", "positive"), (*negative, "denoise", "negative"), (*unet, "denoise", "unet")]
    return nodes, links


def test_controlnet_t2i_and_ip_adapter_strength_zero_and_out_of_range_are_the_plain_image(invoker, services, image_ref):
    def draw(**options):
        return image_of(services, run_graph(invoker, *controlled_graph(image_ref, **options)), "decode")

    base = draw()
    off_range = {"start_percent": 0.5, "end_percent": 1.0}
    cases = {
        "controlnet": lambda values: {"controls": [("controlnet", "controlnet-ldm", values)]},
        "t2i_adapter": lambda values: {"controls": [("t2i_adapter", "t2i-folder", values)]},
        "ip_adapter": lambda values: {"ip": [("ip-ip-adapter", {("weight" if k == "strength" else k): v
                                                               for k, v in values.items()})]},
    }
    drawn = {}
    for name, graph in cases.items():
        assert np.array_equal(draw(**graph({"strength": 0.0})), base), name
        drawn[name] = draw(**graph({"strength": 1.0}))
        assert not np.array_equal(drawn[name], base), name
        # the first pass of two stops at half the schedule: a control from 0.5 on never applies in it
        first_half = draw(denoise_end=0.5)
        assert np.array_equal(draw(denoise_end=0.5, **graph(off_range)), first_half), name
        assert not np.array_equal(draw(denoise_end=0.5, **graph({"strength": 1.0})), first_half), name
    stacked = draw(controls=[("controlnet", "controlnet-ldm", {}), ("controlnet", "controlnet-other", {}),
                             ("t2i_adapter", "t2i-folder", {})], ip=[("ip-ip-adapter-sd15", {})])
    assert all(not np.array_equal(stacked, image) for image in drawn.values())
    # the models were patched for a run only: the plain graph draws the same pixels again
    services.cache.clear()
    assert np.array_equal(draw(), base)


def test_a_blended_conditioning_keeps_the_controls_of_the_first(invoker, services, image_ref):
    def draw(blend_alpha=None, strength=1.0):
        nodes, links = controlled_graph(image_ref, [("controlnet", "controlnet-ldm", {"strength": strength})])
        if blend_alpha is not None:  # apply0's positive -> blend with another prompt -> denoise
            nodes["other"] = {"type": "prompt", "prompt": "a blue sphere"}
            nodes["blend"] = {"type": "conditioning_blend", "alpha": blend_alpha}
            links = [link for link in links if link[2:] != ("denoise", "positive")]
            links += [("model", "clip", "other", "clip"), ("apply0", "positive", "blend", "first"),
                      ("other", "conditioning", "blend", "second"), ("blend", "conditioning", "denoise", "positive")]
        return image_of(services, run_graph(invoker, nodes, links), "decode")

    controlled, uncontrolled = draw(), draw(strength=0.0)
    assert not np.array_equal(controlled, uncontrolled)
    assert np.array_equal(draw(blend_alpha=0.0), controlled)  # alpha 0: the first prompt, still controlled
    halfway = draw(blend_alpha=0.5)
    assert not np.array_equal(halfway, controlled) and not np.array_equal(halfway, uncontrolled)


def test_sdxl_controlnet_and_ip_adapter(invoker, services, image_ref):
    base = image_of(services, run_graph(invoker, *controlled_graph(image_ref, model="tiny-sdxl", prompt="sdxl_prompt")),
                    "decode")
    nodes, links = controlled_graph(image_ref, [("controlnet", "controlnet-xl", {"strength": 0.7})],
                                    ip=[("ip-ip-adapter-xl", {"weight": 0.8})], model="tiny-sdxl", prompt="sdxl_prompt")
    controlled = image_of(services, run_graph(invoker, nodes, links), "decode")
    assert controlled.shape == base.shape and not np.array_equal(controlled, base)


def test_control_models_of_another_family_fail_naming_the_field(invoker, services, image_ref):
    session = run_graph(invoker, *controlled_graph(image_ref, [("controlnet", "controlnet-xl", {})]))
    error = session.results["denoise"][0].error
    assert "field 'positive'" in error and "controlnet-xl" in error and "sdxl" in error
    session = run_graph(invoker, *controlled_graph(image_ref, ip=[("ip-ip-adapter-xl", {})]))
    error = session.results["denoise"][0].error
    assert "field 'unet'" in error and "ip-ip-adapter-xl" in error
    session = run_graph(invoker, *controlled_graph(image_ref, [("controlnet", "controlnet-ldm",
                                                                {"start_percent": 0.6, "end_percent": 0.2})]))
    assert "field 'end_percent'" in session.results["apply0"][0].error


def test_ip_adapter_matches_diffusers_ip_adapter_pipeline(manager, models_dir):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor

    from nodes.base import IPAdapterRef
    from nodes.core.controls import ip_adapters_installed
    from nodes.core.diffusion import DenoiseRequest, denoise, make_noise, make_scheduler

    pipe, weights, clip = manager.load("tiny-sd1"), manager.load("ip-ip-adapter"), manager.load("ip-image-encoder")
    positive, negative = _conditioning(manager)
    noise, image = make_noise(5, (1, 4, 8, 8)), control_image(seed=2)
    ref = IPAdapterRef(model_id="ip-ip-adapter", clip_vision_id="ip-image-encoder", image={"image_name": "x"}, weight=0.6)
    with ip_adapters_installed(pipe.unet, [(weights, clip, image, ref)]) as run:
        request = DenoiseRequest(positive=positive, negative=negative, latents=torch.zeros_like(noise), noise=noise, steps=4,
                                 cfg_scale=7.5, ip_adapter=run)
        ours = denoise(pipe.unet, "sd1", pipe.scheduler.config, request, lambda *a: None)
    unet = UNet2DConditionModel.from_pretrained(models_dir / "tiny-sd1" / "unet")  # diffusers patches it for good
    unet._load_ip_adapter_weights([weights.state], low_cpu_mem_usage=False)
    reference = StableDiffusionPipeline(**{**pipe.components, "unet": unet, "image_encoder": clip,
                                           "feature_extractor": CLIPImageProcessor(size=32, crop_size=32)})
    reference.scheduler = make_scheduler(pipe.scheduler.config, "euler")
    reference.set_ip_adapter_scale(0.6)
    with torch.inference_mode():
        expected = reference(prompt_embeds=positive["embeds"], negative_prompt_embeds=negative["embeds"], ip_adapter_image=image,
                             height=64, width=64, num_inference_steps=4, guidance_scale=7.5, latents=noise,
                             output_type="latent").images
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    plain = denoise(pipe.unet, "sd1", pipe.scheduler.config, request.__class__(**{**request.__dict__, "ip_adapter": None}),
                    lambda *a: None)
    assert not torch.allclose(ours, plain, atol=1e-3)


def test_the_denoiser_with_every_control_compiles_once_for_the_whole_run(manager):
    """On CUDA the denoiser is compiled (in the background); here with a backend that needs no
    compiler: a step outside every control's range has the same input structure, so one build
    serves the whole run, and the compiled module computes what the eager one does."""
    from nodes.base import IPAdapterRef
    from nodes.core.compiled import BackgroundCompiled
    from nodes.core.controls import Steering, ip_adapters_installed, make_control
    from nodes.core.diffusion import Denoiser

    pipe = manager.load("tiny-sd1")
    controls = [(make_control("controlnet", "controlnet-ldm", control_image(), 1.0, 0, 0.5), (True, True),
                 manager.load("controlnet-ldm")),
                (make_control("t2i_adapter", "t2i-folder", control_image(), 1.0, 0.5, 1), (True, True), manager.load("t2i-folder"))]
    ref = IPAdapterRef(model_id="ip-ip-adapter", clip_vision_id="ip-image-encoder", image={"image_name": "x"}, start=0.5)
    generator = torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(2, 77, 32, generator=generator)
    t, guidance = torch.tensor(500), torch.tensor(7.5)
    with ip_adapters_installed(pipe.unet, [(manager.load("ip-ip-adapter"), manager.load("ip-image-encoder"),
                                            control_image(), ref)]) as ip, torch.inference_mode():
        steering = Steering.of(controls, ip, True, torch.zeros(1, 4, 8, 8), (0, 2, 2), "off", None)
        eager = Denoiser(pipe.unet)
        denoiser = BackgroundCompiled(eager, "default", None, backend="aot_eager")
        steps = [(sample, t, embeds, guidance, None, None, None, steering.step(i, sample, t, embeds, None, None))
                 for i in range(2)]
        assert denoiser.pick(*steps[0]) is eager
        assert denoiser.wait(300) and not denoiser.failed
        for inputs in steps:  # first half: ControlNet; second: T2I-Adapter and IP-Adapter
            assert denoiser.pick(*inputs) is denoiser.compiled
            torch.testing.assert_close(denoiser.compiled(*inputs), eager(*inputs), rtol=1e-4, atol=1e-4)
    assert len(denoiser.build_seconds) == 1


def test_the_demo_control_models_are_found_and_the_controlnet_example_runs_on_them(tmp_path):
    """make-demo-models writes control models for tiny-sd1; File -> Examples -> ControlNet runs on them."""
    from app.examples import example
    from services.models import demo

    models = tmp_path / "models"
    demo.write_tiny_sd1_diffusers(models / "tiny-sd1")
    demo.write_demo_control_models(models)
    services = Services.local(_settings(tmp_path / "data", models))
    kinds = {m.id: m.kind for m in services.models.list() if m.kind != "main"}
    assert kinds == {"controlnet-tiny-controlnet": "controlnet", "t2i-adapter-tiny-t2i-adapter": "t2i_adapter",
                     "ip-adapter-tiny-ip-adapter": "ip_adapter", "clip-vision-tiny-image-encoder": "clip_vision"}
    source = tmp_path / "edges.png"
    control_image(64).save(source)
    graph = example("controlnet").graph
    nodes = {n["id"]: {k: v for k, v in n.items() if k != "id"} for n in graph["nodes"]}
    nodes["source"]["path"] = str(source)
    nodes["model"]["model"], nodes["controlnet"]["model"] = "tiny-sd1", "controlnet-tiny-controlnet"
    nodes["empty"].update(width=64, height=64)
    nodes["denoise"]["steps"] = 2
    links = [(link["from_node"], link["from_field"], link["to_node"], link["to_field"]) for link in graph["links"]]
    invoker = Invoker(services)
    try:
        controlled = image_of(services, run_graph(invoker, nodes, links), "decode")
        nodes["control"]["strength"] = 0.0
        plain = image_of(services, run_graph(invoker, nodes, links), "decode")
    finally:
        invoker.shutdown()
    assert controlled.shape == (64, 64, 3) and not np.array_equal(controlled, plain)
