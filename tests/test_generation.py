"""txt2img / img2img / inpaint nodes on tiny random-weight models written as real files."""
from __future__ import annotations

import threading
from typing import get_args

import numpy as np
import pytest

from services.config import Settings
from services.container import IN_PROCESS, WORKER, Services
from services.engine.events import NODE_PROGRESS
from services.executors.base import WARMING_UP
from services.invoker import Invoker


pytestmark = pytest.mark.usefixtures("torch_one_thread")

@pytest.fixture(scope="module", params=[IN_PROCESS, WORKER])
def services(tmp_path_factory, request) -> Services:
    """One set of services per executor for the module, so each tiny model is read from disk once
    (in-process, and once more in the AI worker process)."""
    from services.models import demo as demo_models

    root = tmp_path_factory.mktemp("gen")
    models = root / "models"
    demo_models.write_tiny_sd1_diffusers(models / "tiny-sd1")
    demo_models.write_tiny_sd1_diffusers(models / "tiny-inpaint", seed=5, inpaint=True)
    demo_models.write_tiny_sd1_single_file(models / "tiny-single.safetensors", seed=1)
    demo_models.write_tiny_sd1_single_file(models / "tiny-ckpt.ckpt", seed=1)
    demo_models.write_tiny_vae_folder(models / "tiny-vae")
    demo_models.write_tiny_sdxl_diffusers(models / "tiny-sdxl")
    settings = Settings(data_dir=root, config_dir=root / "config", models_dir=models, outputs_dir=root / "outputs",
                        sessions_dir=root / "sessions", plugins_dir=root / "plugins", device="cpu")
    return Services.local(settings, executor=request.param)


@pytest.fixture(scope="module")
def invoker(services):
    invoker = Invoker(services)
    yield invoker
    invoker.shutdown()


def run(invoker, services, *nodes, timeout=120):
    """Add nodes (each (data, links)) to a new session and run it; returns (session, progress events)."""
    session = invoker.create_session()
    progress = []
    token = services.events.subscribe(lambda e: progress.append(e) if e.type == NODE_PROGRESS else None, session.id)
    for data, links in nodes:
        session.add_node(data, links)
    invoker.invoke(session)
    assert invoker.wait(session.id, timeout)
    services.events.unsubscribe(token)
    return session, progress


def txt2img(**values):
    return ({"type": "txt2img", "model": "tiny-sd1", "prompt": "a red cube", "steps": 3, "width": 64, "height": 64,
             "seed": 1, **values}, [])


def pixels(services, row) -> np.ndarray:
    assert row.state == "completed", row.error
    return np.asarray(services.images.get(row.outputs["image"]["image_name"]))


def test_txt2img_makes_an_image_of_the_asked_size_with_previews(invoker, services):
    session, progress = run(invoker, services, txt2img(width=64, height=96, steps=4))
    image = pixels(services, session.results["1"][0])
    assert image.shape == (96, 64, 3)
    # a new AI worker may still be importing diffusers when the node arrives: it says so at step 0
    assert all(e.data["message"] == WARMING_UP for e in progress if not e.data["step"])
    progress = [e for e in progress if e.data["step"]]
    assert [e.data["step"] for e in progress] == [1, 2, 3, 4] and {e.data["total"] for e in progress} == {4}
    previews = [e for e in progress if "preview" in e.data]
    assert all(e.data["preview"].size == (8, 12) for e in previews)  # latent-sized, no VAE decode
    # about 20 a second, whichever process runs the node: the first and the last always
    assert previews[0].data["step"] == 1 and previews[-1].data["step"] == 4
    assert services.images.metadata(session.results["1"][0].outputs["image"]["image_name"]) is not None


def test_same_seed_gives_identical_pixels_and_another_seed_does_not(invoker, services):
    first, _ = run(invoker, services, txt2img(scheduler="euler_a"))
    services.cache.clear()  # run the node again instead of reusing its cached output
    second, _ = run(invoker, services, txt2img(scheduler="euler_a"))
    other, _ = run(invoker, services, txt2img(scheduler="euler_a", seed=2))
    a, b, c = (pixels(services, s.results["1"][0]) for s in (first, second, other))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_single_file_safetensors_and_ckpt_of_the_same_weights_draw_the_same(invoker, services):
    session, _ = run(invoker, services, txt2img(model="tiny-single"), txt2img(model="tiny-ckpt"))
    assert np.array_equal(pixels(services, session.results["1"][0]), pixels(services, session.results["2"][0]))


def test_the_nodes_list_exactly_the_known_samplers_and_schedules():
    from nodes.core.diffusion import SAMPLER_ALIASES, SAMPLERS, SCHEDULES
    from nodes.generation import SchedulerName
    from nodes.latents import SamplerName, ScheduleName

    assert set(get_args(SamplerName)) == set(SAMPLERS) and set(get_args(ScheduleName)) == set(SCHEDULES)
    assert set(get_args(SchedulerName)) == set(SAMPLERS) | set(SAMPLER_ALIASES)


def test_sdxl_model_is_detected_and_generates(invoker, services):
    assert services.models.get("tiny-sdxl").base == "sdxl"
    session, progress = run(invoker, services, txt2img(model="tiny-sdxl", negative_prompt="blurry", width=64, height=80))
    assert pixels(services, session.results["1"][0]).shape == (80, 64, 3)
    assert len(progress) == 3


def test_vae_override_is_used(invoker, services):
    session, _ = run(invoker, services, txt2img(), txt2img(vae="tiny-vae"))
    assert not np.array_equal(pixels(services, session.results["1"][0]), pixels(services, session.results["2"][0]))


def test_img2img_keeps_the_source_size(invoker, services):
    session, progress = run(invoker, services,
                            ({"type": "noise_image", "width": 80, "height": 64, "seed": 4}, []),
                            ({"type": "img2img", "model": "tiny-sd1", "prompt": "x", "steps": 4, "strength": 0.5,
                              "seed": 1}, [(-1, "image", "image")]))
    assert pixels(services, session.results["2"][0]).shape == (64, 80, 3)
    assert len(progress) == 2  # strength 0.5 of 4 steps


def test_inpaint_keeps_the_unmasked_part_whatever_the_seed(invoker, services):
    source = ({"type": "noise_image", "width": 64, "height": 64, "seed": 4}, [])
    black = ({"type": "solid_color", "width": 64, "height": 64, "color": "black"}, [])
    white = ({"type": "solid_color", "width": 64, "height": 64, "color": "white"}, [])

    def inpaint(mask_node, seed, model="tiny-sd1"):
        return ({"type": "inpaint", "model": model, "prompt": "x", "steps": 3, "seed": seed},
                [("1", "image", "image"), (mask_node, "image", "mask")])

    session, _ = run(invoker, services, source, black, white, inpaint("2", 1), inpaint("2", 2), inpaint("3", 1),
                     inpaint("3", 2), inpaint("3", 1, model="tiny-inpaint"))
    kept_1, kept_2, redrawn_1, redrawn_2, nine_channel = (pixels(services, session.results[str(n)][0]) for n in range(4, 9))
    assert np.array_equal(kept_1, kept_2)  # black mask: the source's latents survive, noise does not matter
    assert not np.array_equal(redrawn_1, redrawn_2)
    assert nine_channel.shape == (64, 64, 3)


def test_inpainting_model_is_refused_by_txt2img_naming_the_field(invoker, services):
    session, _ = run(invoker, services, txt2img(model="tiny-inpaint"))
    row = session.results["1"][0]
    assert row.state == "failed" and "field 'model'" in row.error and "inpaint node" in row.error


def test_unknown_model_or_vae_fails_naming_the_field_and_the_known_ids(invoker, services):
    session, _ = run(invoker, services, txt2img(model="no-such-model"), txt2img(vae="tiny-sd1"))
    model_error, vae_error = session.results["1"][0].error, session.results["2"][0].error
    assert "field 'model'" in model_error and "no-such-model" in model_error and "tiny-sd1" in model_error
    assert "field 'vae'" in vae_error and "tiny-vae" in vae_error


def test_too_low_strength_fails_naming_the_field(invoker, services):
    session, _ = run(invoker, services, ({"type": "solid_color", "width": 64, "height": 64}, []),
                     ({"type": "img2img", "model": "tiny-sd1", "steps": 3, "strength": 0.1, "seed": 1},
                      [(-1, "image", "image")]))
    row = session.results["2"][0]
    assert row.state == "failed" and "field 'strength'" in row.error


def test_width_not_a_multiple_of_8_is_rejected_when_added(invoker):
    session = invoker.create_session()
    with pytest.raises(Exception, match="width"):
        session.add_node({"type": "txt2img", "model": "tiny-sd1", "width": 100})


def test_cancel_stops_within_one_denoising_step(invoker, services):
    session = invoker.create_session()
    steps_seen = []
    canceled = threading.Event()

    def on_event(event):
        if event.type == NODE_PROGRESS and event.data["step"]:  # step 0: a new worker still importing
            steps_seen.append(event.data["step"])
            if event.data["step"] == 2:
                invoker.cancel(session.id)
                canceled.set()

    services.events.subscribe(on_event, session.id)
    session.add_node(*txt2img(steps=50, seed=9))
    invoker.invoke(session)
    assert invoker.wait(session.id, 120)
    assert canceled.is_set()
    assert session.results["1"][0].state == "canceled"
    if services.executor_kind == IN_PROCESS:
        assert steps_seen == [1, 2]  # canceled inside step 2's report
    else:  # the cancel reaches the worker while it runs step 3 (or 4, on a busy machine): it stops there
        assert steps_seen[:2] == [1, 2] and len(steps_seen) <= 4


@pytest.mark.gpu
def test_txt2img_on_the_gpu_in_half_precision(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from services.models import demo as demo_models
    from nodes.core.diffusion import GenerationRequest, Generator
    from services.models.manager import LocalModelManager

    demo_models.write_tiny_sd1_diffusers(tmp_path / "models" / "tiny-sd1")
    settings = Settings(data_dir=tmp_path, config_dir=tmp_path, models_dir=tmp_path / "models", outputs_dir=tmp_path,
                        sessions_dir=tmp_path, plugins_dir=tmp_path, device="cuda")
    pipe = LocalModelManager(settings).load("tiny-sd1")
    request = GenerationRequest(prompt="x", steps=3, width=64, height=64, seed=1)
    first = Generator(pipe, "sd1").run(request, lambda *a: None)[0]
    again = Generator(pipe, "sd1").run(request, lambda *a: None)[0]
    assert pipe.unet.dtype == torch.float16
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_a_corrupt_model_fails_naming_node_field_and_file_without_a_traceback(tmp_path):
    """A single file whose header passes the scan (it is listed) but whose weights do not load."""
    import re
    import warnings

    from services.models import demo as demo_models

    models = tmp_path / "models"
    demo_models.write_tiny_sd1_single_file(models / "good.safetensors", seed=1)
    data = (models / "good.safetensors").read_bytes()
    # a conv weight's shape swapped: same size, so the header still checks out; loading it cannot
    corrupt, count = re.subn(rb'("model\.diffusion_model\.out\.2\.weight":\{[^}]*"shape":\[)4,32(,3,3\])', rb"\g<1>32,4\2", data)
    assert count == 1
    (models / "corrupt.safetensors").write_bytes(corrupt)
    settings = Settings(data_dir=tmp_path, config_dir=tmp_path / "config", models_dir=models, outputs_dir=tmp_path / "outputs",
                        sessions_dir=tmp_path / "sessions", plugins_dir=tmp_path / "plugins", device="cpu")
    services = Services.local(settings)
    demo_models.write_tiny_sd1_diffusers(models / "folder")  # diffusers' warning comes from its from_pretrained
    assert sorted(m.id for m in services.models.list("main")) == ["corrupt", "folder", "good"]
    invoker = Invoker(services)
    try:
        session, _ = run(invoker, services, txt2img(model="corrupt"))
        error = session.results["1"][0].error
        assert error.startswith(f"node '1' (txt2img), field 'model': cannot load model 'corrupt' ({models / 'corrupt.safetensors'}): ")
        assert "Traceback" not in error and len(error.splitlines()) == 1
        with warnings.catch_warnings(record=True) as caught:  # diffusers' torch_dtype FutureWarning, once on every load
            warnings.simplefilter("always")
            session, _ = run(invoker, services, txt2img(model="folder"))
        assert session.is_complete(), session.errors()
        assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    finally:
        invoker.shutdown()


def _half_vae(scaling_factor: float = 0.18215, **scaled_weights: float):
    """The tiny VAE in float16 and its float32 twin with the same (rounded) weights; scaled_weights:
    a module path's weight multiplied first (to make float16 overflow)."""
    import torch

    from services.models.demo import tiny_vae

    half = tiny_vae().eval()
    half.register_to_config(scaling_factor=scaling_factor)
    with torch.no_grad():
        for path, factor in scaled_weights.items():
            half.get_submodule(path).weight.mul_(factor)
    half.half()
    full = tiny_vae().eval()
    full.register_to_config(scaling_factor=scaling_factor)
    full.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    return half, full


def test_sd_vae_computes_in_float16_and_sdxl_vae_in_float32():
    """diffusers' SD pipelines decode SD 1.x/2.x in float16 though its config asks for float32 by default;
    SDXL's VAE (its own latent scale) overflows in float16 and is upcast as asked."""
    import torch

    from nodes.core.diffusion import decode_latents, encode_pixels

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    half, full = _half_vae()
    assert half.config.force_upcast  # diffusers' default for a config that does not say
    drawn = np.asarray(decode_latents(half, latents)[0], dtype=int)
    encoded = encode_pixels(half, pixels)
    assert half.dtype == torch.float16 and encoded.dtype == torch.float16
    assert np.abs(drawn - np.asarray(decode_latents(full, latents)[0], dtype=int)).max() <= 2
    assert torch.allclose(encoded.float(), encode_pixels(full, pixels), atol=1e-2)
    sdxl, _ = _half_vae(scaling_factor=0.13025)
    decode_latents(sdxl, latents)
    assert sdxl.dtype == torch.float32


def test_a_vae_that_overflows_in_float16_computes_again_in_float32_and_stays_there(caplog):
    import torch

    from nodes.core.diffusion import decode_latents, encode_pixels

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    half, full = _half_vae(**{"decoder.conv_in": 1e5})
    with torch.inference_mode():
        assert not torch.isfinite(half.decode((latents / 0.18215).half()).sample).all()  # it does overflow
    drawn = np.asarray(decode_latents(half, latents)[0], dtype=int)
    assert half.dtype == torch.float32 and "overflowed in float16" in caplog.text
    assert np.array_equal(drawn, np.asarray(decode_latents(full, latents)[0], dtype=int))
    decode_latents(half, latents)
    assert half.dtype == torch.float32 and caplog.text.count("overflowed") == 1  # once, not per image

    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    half, full = _half_vae(**{"encoder.conv_out": 1e5})
    encoded = encode_pixels(half, pixels)
    assert half.dtype == torch.float32 and torch.isfinite(encoded).all()
    assert torch.equal(encoded, encode_pixels(full, pixels))
