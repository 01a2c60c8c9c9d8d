"""Guidance without ControlNets: regional prompts, seamless tiling and the control-image preprocessors,
on tiny random-weight models written as real files (graphs on both executors), values asserted."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from services.container import IN_PROCESS, WORKER, Services
from services.invoker import Invoker
from tests.test_diffusion_nodes import _settings, image_of, run_graph, txt2img_graph

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from services.models import demo
    from services.models.preprocessor_files import write_random_preprocessor

    models = tmp_path_factory.mktemp("guidance") / "models"
    demo.write_tiny_sd1_diffusers(models / "tiny-sd1")
    write_random_preprocessor(models / "preprocessors" / "ControlNetHED.pth", "hed")
    write_random_preprocessor(models / "preprocessors" / "sk_model.pth", "lineart", seed=1)
    return models


@pytest.fixture(scope="module", params=[IN_PROCESS, WORKER])
def services(models_dir, tmp_path_factory, request) -> Services:
    return Services.local(_settings(tmp_path_factory.mktemp("graphs"), models_dir), executor=request.param)


@pytest.fixture(scope="module")
def invoker(services):
    invoker = Invoker(services)
    yield invoker
    invoker.shutdown()


def _stored(services, array) -> dict:
    from PIL import Image

    return {"image_name": services.images.save(Image.fromarray(array)).image_name}


def _mask(services, box=None, size=64) -> dict:
    """A black mask with a white (x0, y0, x1, y1) box."""
    mask = np.zeros((size, size), dtype=np.uint8)
    if box is not None:
        mask[box[1]:box[3], box[0]:box[2]] = 255
    return _stored(services, mask)


def _regional(nodes, links, regions):
    """The txt2img graph with its positive prompt combined with region prompts: [(prompt, node values)]."""
    source = ("pos", "conditioning")
    for n, (prompt, restrict) in enumerate(regions):
        nodes[f"rp{n}"] = {"type": "prompt", "prompt": prompt}
        nodes[f"rs{n}"] = restrict
        nodes[f"rc{n}"] = {"type": "conditioning_regions"}
        links += [("model", "clip", f"rp{n}", "clip"), (f"rp{n}", "conditioning", f"rs{n}", "conditioning"),
                  (*source, f"rc{n}", "first"), (f"rs{n}", "conditioning", f"rc{n}", "second")]
        source = (f"rc{n}", "conditioning")
    links = [link for link in links if link[2:] != ("denoise", "positive")] + [(*source, "denoise", "positive")]
    return nodes, links


# --------------------------------------------------------------------------------------------
# Regional prompts


def test_a_region_covering_nothing_is_the_base_and_two_regions_change_their_own_halves(invoker, services):
    nodes, links = txt2img_graph(prompt="prompt", steps=4)
    base = image_of(services, run_graph(invoker, nodes, links), "decode").astype(int)
    nothing = {"type": "conditioning_set_mask", "mask": _mask(services), "strength": 1.0}
    nodes, links = _regional(*txt2img_graph(prompt="prompt", steps=4), [("a blue sphere", nothing)])
    assert np.array_equal(image_of(services, run_graph(invoker, nodes, links), "decode"), base)

    left = {"type": "conditioning_set_mask", "mask": _mask(services, (0, 0, 32, 64)), "strength": 1.0}
    right = {"type": "conditioning_set_area", "x": 32, "y": 0, "width": 32, "height": 64, "strength": 1.0}
    regions = [("a blue sphere", left), ("green grass, night", right)]
    nodes, links = _regional(*txt2img_graph(prompt="prompt", steps=4), regions)
    session = run_graph(invoker, nodes, links)
    both = image_of(services, session, "decode").astype(int)
    nodes, links = _regional(*txt2img_graph(prompt="prompt", steps=4), regions[:1])
    left_only = image_of(services, run_graph(invoker, nodes, links), "decode").astype(int)
    assert np.abs(both - base)[:, :32].mean() > 1 and np.abs(both - base)[:, 32:].mean() > 1
    assert np.abs(both - left_only)[:, 40:].mean() > 1  # the right region's own prompt shows on the right
    # the regional mix is deterministic
    assert np.array_equal(image_of(services, run_graph(invoker, nodes, links), "decode"), left_only)


def test_regions_in_the_loop_mix_predictions_by_mask_weight():
    """One step by hand: regions (a mask and an area) give sum(pred * weight) / sum(weight)."""
    import torch

    from nodes.core.diffusion import Denoiser
    from nodes.core.regions import RegionalPredictor, combined, with_each
    from services.models.demo import tiny_unet

    unet = tiny_unet().eval()
    denoiser = Denoiser(unet)
    generator = torch.Generator().manual_seed(0)
    a, b = ({"embeds": torch.randn(1, 77, 32, generator=generator), "pooled": None, "empty": torch.zeros(1, 77, 32)}
            for _ in range(2))
    mask = torch.zeros(64, 64)
    mask[:, :32] = 1.0
    latents, t = torch.randn(1, 4, 8, 8, generator=generator), torch.tensor(500)

    def unet_call(x, t, embeds, guidance, extra, text_embeds, time_ids):
        return unet(x, t, encoder_hidden_states=embeds).sample

    with torch.inference_mode():
        mixed = RegionalPredictor(denoiser, combined([a, with_each(b, mask=mask, strength=3.0)]), None, None,
                                  (8, 8), 1, "cpu", torch.float32, None, None)(latents, t)
        pred_a, pred_b = unet_call(latents, t, a["embeds"], None, None, None, None), unet_call(latents, t, b["embeds"], None, None, None, None)
        torch.testing.assert_close(mixed[..., :4], (pred_a[..., :4] + 3 * pred_b[..., :4]) / 4)
        torch.testing.assert_close(mixed[..., 4:], pred_a[..., 4:])
        area = RegionalPredictor(denoiser, with_each(b, area=(0, 0, 64, 32)), None, None, (8, 8), 1, "cpu",
                                 torch.float32, None, None)(latents, t)
        torch.testing.assert_close(area[:, :, :4], unet_call(latents[:, :, :4], t, b["embeds"], None, None, None, None))
        assert torch.equal(area[:, :, 4:], torch.zeros_like(area[:, :, 4:]))  # no conditioning there: zero, as ComfyUI


# --------------------------------------------------------------------------------------------
# Seamless tiling


def _generate(pipe, seamless, noise):
    import torch

    from nodes.core.conditioning import PromptEncoder
    from nodes.core.diffusion import DenoiseRequest, decode_latents, denoise

    encoder = PromptEncoder(pipe, "sd1")
    request = DenoiseRequest(positive=encoder.encode("a red cube"), negative=encoder.encode(""),
                             latents=torch.zeros_like(noise), noise=noise, steps=3, sampler="euler", seamless=seamless)
    latents = denoise(pipe.unet, "sd1", pipe.scheduler.config, request, lambda *_: None)
    return np.asarray(decode_latents(pipe.vae, latents, seamless_axes=seamless)[0]).astype(int)


def _edge_gap(image, axis, at=0):
    """Mean difference between the lines at `at - 1` and `at` along axis (at 0: the wrapped edge)."""
    return np.abs(np.take(image, at, axis=axis) - np.take(image, at - 1, axis=axis)).mean()


def test_a_seamless_image_continues_across_its_edges(models_dir, tmp_path):
    """Circular padding makes generation shift-equivariant (for shifts that are whole cells of the
    UNet's coarsest level): from noise rolled by 4 latent cells the seamless image is the first one
    rolled by 32 pixels, so its wrapped edge (columns -1, 0) is the second's inner columns 31, 32
    (and rows likewise); without seamless the edges do not meet."""
    from nodes.core.diffusion import make_noise
    from services.models.manager import LocalModelManager

    pipe = LocalModelManager(_settings(tmp_path, models_dir)).load("tiny-sd1")
    noise = make_noise(3, (1, 4, 8, 8))
    for seamless, axes in (("both", (1, 0)), ("x", (1,)), ("none", ())):
        first = _generate(pipe, seamless, noise)
        for axis in (1, 0):
            second = _generate(pipe, seamless, noise.roll(4, dims=2 + axis))
            wrapped, inner = _edge_gap(first, axis), _edge_gap(second, axis, 32)
            if axis in axes:
                assert abs(wrapped - inner) < 0.05 * inner, (seamless, axis, wrapped, inner)
                assert np.abs(np.roll(first, 32, axis=axis) - second).max() <= 1
            else:
                assert np.abs(np.roll(first, 32, axis=axis) - second).mean() > 5, (seamless, axis)


def test_seamless_switches_in_a_graph(invoker, services):
    images = {}
    for seamless in ("none", "both"):
        nodes, links = txt2img_graph(prompt="prompt", steps=3)
        nodes["denoise"]["seamless"] = nodes["decode"]["seamless"] = seamless
        images[seamless] = image_of(services, run_graph(invoker, nodes, links), "decode")
    assert not np.array_equal(images["none"], images["both"])
    nodes, links = txt2img_graph(prompt="prompt")
    nodes["decode"].update(tiled=True, seamless="x")
    assert "field 'seamless'" in run_graph(invoker, nodes, links).results["decode"][0].error


def test_seamless_restores_the_convolutions():
    import torch

    from nodes.core.seamless import seamless
    from services.models.demo import tiny_vae

    vae = tiny_vae()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = vae.decode(latents).sample
        with seamless(vae, "both"):
            wrapped = vae.decode(latents).sample
            rolled = vae.decode(latents.roll(3, dims=3)).sample  # circular everywhere: shifting commutes
        after = vae.decode(latents).sample
    assert torch.equal(before, after) and not torch.allclose(before, wrapped)
    torch.testing.assert_close(rolled, wrapped.roll(24, dims=3), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Preprocessors


def test_canny_matches_opencv_on_sample_photos():
    from nodes.core.preprocess import canny

    for image in (data.astronaut(), data.camera(), data.coffee()):
        for low, high in ((100, 200), (20, 60), (200, 100)):
            assert np.array_equal(canny(image, low, high), cv2.Canny(image, low, high)), (image.shape, low, high)


def test_weight_free_preprocessors_by_value(invoker, services):
    photo = data.astronaut()[::4, ::4].copy()  # 128 x 128
    steps = np.repeat(np.array([[10, 100, 200, 250]], dtype=np.uint8), 32, axis=1).repeat(8, axis=0)
    ref_photo, ref_steps = _stored(services, photo), _stored(services, np.stack([steps] * 3, axis=2))
    nodes = {"canny": {"type": "canny", "image": ref_photo, "low_threshold": 50, "high_threshold": 150},
             "threshold": {"type": "threshold", "image": ref_steps, "level": 150},
             "inverted": {"type": "threshold", "image": ref_steps, "level": 150, "invert": True},
             "scribble": {"type": "scribble", "image": ref_photo, "level": 32},
             "blur": {"type": "blur", "image": ref_photo, "sigma": 2.0},
             "tile": {"type": "tile_resample", "image": ref_photo, "levels": 3},
             "palette": {"type": "color_palette", "image": ref_steps, "cell": 16},
             "shuffle": {"type": "content_shuffle", "image": ref_photo, "scale": 32, "seed": 5},
             "shuffle_again": {"type": "content_shuffle", "image": ref_photo, "scale": 32, "seed": 5},
             "shuffle_other": {"type": "content_shuffle", "image": ref_photo, "scale": 32, "seed": 6}}
    session = run_graph(invoker, nodes, [])
    out = {name: image_of(services, session, name) for name in nodes}
    assert np.array_equal(out["canny"][..., 0], cv2.Canny(photo, 50, 150))
    assert np.array_equal(out["threshold"][0, ::32, 0], [0, 0, 255, 255])
    assert np.array_equal(out["inverted"][0, ::32, 0], [255, 255, 0, 0])
    blurred = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 2.0)
    assert np.abs(out["blur"].astype(float) - blurred).max() <= 0.51
    fine, coarse = cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 0.5), cv2.GaussianBlur(photo.astype(np.float32), (0, 0), 5.0)
    expected = np.where(2 * np.ceil(np.clip(np.min(coarse - fine, axis=2), 0, 255)) > 32, 255, 0)
    assert np.array_equal(out["scribble"][..., 0], expected) and 0.01 < (expected > 0).mean() < 0.5
    tile_expected = cv2.resize(cv2.resize(photo, (16, 16), interpolation=cv2.INTER_AREA), (128, 128), interpolation=cv2.INTER_CUBIC)
    assert out["tile"].shape == photo.shape and np.abs(out["tile"].astype(float) - tile_expected).mean() < 6
    # 16-pixel blocks straddling the 32-pixel steps are flat, each the average of its pixels
    block = out["palette"][:16, 16:32]
    assert (block == block[0, 0]).all() and block[0, 0, 0] == 10
    assert out["palette"].shape == (8, 128, 3) and out["palette"][0, 40, 0] == 100
    assert np.array_equal(out["shuffle"], out["shuffle_again"]) and not np.array_equal(out["shuffle"], out["shuffle_other"])
    assert not np.array_equal(out["shuffle"], photo) and np.abs(out["shuffle"].astype(float).mean() - photo.mean()) < 40
    assert not any(row[0].state == "failed" for row in session.results.values())


def test_hed_and_lineart_load_their_files_and_missing_weights_say_where_to_put_them(invoker, services, models_dir):
    import torch
    from PIL import Image

    from nodes.core.annotators import run_hed, run_lineart
    from services.models.preprocessor_files import load_preprocessor

    photo = data.astronaut()[::8, ::8].copy()  # 64 x 64
    nodes = {"hed": {"type": "hed", "image": _stored(services, photo), "resolution": 64},
             "lineart": {"type": "lineart", "image": _stored(services, photo), "resolution": 64},
             "coarse": {"type": "lineart", "image": _stored(services, photo), "coarse": True},
             "depth": {"type": "depth", "image": _stored(services, photo)}}
    session = run_graph(invoker, nodes, [])
    torch.set_num_threads(1)
    expected_hed = np.asarray(run_hed(load_preprocessor(models_dir / "preprocessors" / "ControlNetHED.pth", "hed"),
                                      Image.fromarray(photo), 64))
    expected_lines = np.asarray(run_lineart(load_preprocessor(models_dir / "preprocessors" / "sk_model.pth", "lineart"),
                                            Image.fromarray(photo), 64))
    assert np.array_equal(image_of(services, session, "hed"), expected_hed) and expected_hed.std() > 0
    assert np.array_equal(image_of(services, session, "lineart"), expected_lines) and expected_lines.std() > 0
    coarse = session.results["coarse"][0].error
    assert "field 'model'" in coarse and str(models_dir / "preprocessors" / "sk_model2.pth") in coarse
    assert "dpt_hybrid-midas-501f0c75.pt" in session.results["depth"][0].error
    found = {m.architecture: m.id for m in services.models.list("preprocessor")} if services.executor_kind == IN_PROCESS else None
    assert found in (None, {"hed": "preprocessors-controlnethed", "lineart": "preprocessors-sk-model"})
