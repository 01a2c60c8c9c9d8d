"""Diffusion as composable nodes, on tiny random-weight models, LoRAs and embeddings written as real files.

The first part checks values through the same code a user's files take (the model manager reads
the files, nodes/core applies them); the graph tests run against both executors (in-process and
the AI worker), like tests/test_generation.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from services.config import Settings
from services.container import IN_PROCESS, WORKER, Services
from services.invoker import Invoker

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    from services.models import demo

    models = tmp_path_factory.mktemp("diffusion") / "models"
    demo.write_tiny_sd1_diffusers(models / "tiny-sd1")
    demo.write_tiny_sdxl_diffusers(models / "tiny-sdxl")
    demo.write_tiny_sdxl_refiner_diffusers(models / "tiny-refiner")
    sd1 = demo.tiny_sd1_modules()  # the layer shapes of tiny-sd1
    sd1_parts = {"unet": sd1["unet"], "text_encoder": sd1["text_encoder"]}
    demo.write_tiny_lora(models / "loras" / "kohya-sd1.safetensors", sd1_parts, "kohya")
    demo.write_tiny_lora(models / "loras" / "peft-sd1.safetensors", sd1_parts, "peft", seed=31)
    sdxl = StableDiffusionXLPipeline.from_pretrained(models / "tiny-sdxl")
    demo.write_tiny_lora(models / "loras" / "kohya-sdxl.safetensors",
                         {"unet": sdxl.unet, "text_encoder": sdxl.text_encoder, "text_encoder_2": sdxl.text_encoder_2},
                         "kohya", ldm_names=True)
    demo.write_tiny_embedding(models / "embeddings" / "shiny.pt")
    demo.write_tiny_embedding(models / "embeddings" / "matte.safetensors", seed=41)
    demo.write_tiny_embedding(models / "embeddings" / "glow.bin", seed=42)
    demo.write_tiny_embedding(models / "embeddings" / "xl-style.safetensors", seed=43, sdxl=True)
    return models


def _settings(root, models) -> Settings:
    return Settings(data_dir=root, config_dir=root / "config", models_dir=models, outputs_dir=root / "outputs",
                    sessions_dir=root / "sessions", plugins_dir=root / "plugins", device="cpu")


@pytest.fixture(scope="module")
def manager(models_dir, tmp_path_factory):
    from services.models.manager import LocalModelManager

    return LocalModelManager(_settings(tmp_path_factory.mktemp("manager"), models_dir))


# --------------------------------------------------------------------------------------------
# Files found


def test_loras_and_embeddings_are_found_with_their_kind_and_family(manager):
    loras = {m.id: m for m in manager.list("lora")}
    assert set(loras) == {"loras-kohya-sd1", "loras-peft-sd1", "loras-kohya-sdxl"}
    embeddings = {m.name: m for m in manager.list("embedding")}
    assert set(embeddings) == {"shiny", "matte", "glow", "xl-style"}
    assert embeddings["xl-style"].base == "sdxl"
    assert manager.unrecognized() == []


# --------------------------------------------------------------------------------------------
# LoRA values


@pytest.mark.parametrize("lora_id", ["loras-kohya-sd1", "loras-peft-sd1"])
def test_a_patched_layer_is_base_plus_weighted_up_down_and_the_base_is_restored_bit_identical(manager, lora_id):
    from nodes.core.lora import applied

    pipe, lora = manager.load("tiny-sd1"), manager.load(lora_id)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = next(v for k, v in lora.layers.items() if k.startswith("unet:") and k.endswith(name.replace(".", "_")))
    conv_name = "down_blocks.0.resnets.0.conv1"
    conv_layer = next(v for k, v in lora.layers.items() if k.endswith(conv_name.replace(".", "_")))
    scale = 0.5 if lora_id.startswith("loras-kohya") else 1.0  # kohya alpha = rank / 2; PEFT files: 1
    with applied({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, [(lora, 0.7)]) as changed:
        assert changed == len(lora.layers)
        weight = pipe.unet.get_submodule(name).weight
        expected = before[name + ".weight"] + 0.7 * (layer.up @ layer.down) * scale
        torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6)
        conv = pipe.unet.get_submodule(conv_name).weight
        conv_delta = (conv_layer.up.flatten(1) @ conv_layer.down.flatten(1)).reshape(conv.shape) * 0.7 * scale
        torch.testing.assert_close(conv, before[conv_name + ".weight"] + conv_delta, rtol=0, atol=1e-6)
        assert not torch.equal(pipe.text_encoder.state_dict()["encoder.layers.0.self_attn.q_proj.weight"],
                               text_before["encoder.layers.0.self_attn.q_proj.weight"])
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, pipe.text_encoder.state_dict()[k]) for k, v in text_before.items())


def test_a_lora_reaches_fused_qkv_projections_as_on_cuda(manager):
    """On CUDA the UNet's q/k/v projections are fused (one matrix product); the LoRA must reach the fused copy."""
    from nodes.core.lora import applied
    from services.models.demo import tiny_unet

    plain, fused = tiny_unet(), tiny_unet()
    fused.fuse_qkv_projections()
    lora = manager.load("loras-kohya-sd1")
    generator = torch.Generator().manual_seed(0)
    sample, context = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 32, generator=generator)
    with torch.inference_mode():
        before = fused(sample, 10, encoder_hidden_states=context).sample
        with applied({"unet": plain}, [(lora, 1.0)]):
            expected = plain(sample, 10, encoder_hidden_states=context).sample
        with applied({"unet": fused}, [(lora, 1.0)]):
            got = fused(sample, 10, encoder_hidden_states=context).sample
        after = fused(sample, 10, encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, before) and torch.equal(after, before)


def test_a_lora_patches_weights_made_under_inference_mode(manager):
    """On CUDA the node tunes the UNet under torch.inference_mode: its fused weights are then
    inference tensors, which refuse in-place updates outside it (this crashed on an H200)."""
    from nodes.core.lora import applied
    from services.models.demo import tiny_unet

    unet = tiny_unet()
    with torch.inference_mode():
        unet.fuse_qkv_projections()
    fused = next(m for m in unet.modules() if getattr(m, "to_qkv", None) is not None).to_qkv.weight
    assert fused.is_inference()
    before = fused.clone()
    with applied({"unet": unet}, [(manager.load("loras-kohya-sd1"), 1.0)]) as changed:
        assert changed > 0 and not torch.equal(fused, before)
    assert torch.equal(fused, before)


def test_kohya_sdxl_lora_with_original_module_names_reaches_the_unet_and_both_text_encoders(manager):
    from nodes.core.lora import applied

    pipe, lora = manager.load("tiny-sdxl"), manager.load("loras-kohya-sdxl")
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in parts.items()}
    with applied(parts, [(lora, 1.0)]) as changed:
        assert changed == len(lora.layers)
        for name, module in parts.items():
            assert any(not torch.equal(v, module.state_dict()[k]) for k, v in before[name].items()), name
    for name, module in parts.items():
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in before[name].items())


def test_a_lora_of_another_family_is_refused_and_nothing_stays_changed(manager):
    from nodes.core.lora import LoRAMismatchError, applied

    pipe = manager.load("tiny-sd1")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(LoRAMismatchError, match="loras-kohya-sdxl"):
        with applied({"unet": pipe.unet}, [(manager.load("loras-kohya-sd1"), 1.0), (manager.load("loras-kohya-sdxl"), 1.0)],
                     ["loras-kohya-sd1", "loras-kohya-sdxl"]):
            pass
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------------------------
# Prompts


def test_prompt_syntax_weights_nesting_escapes_and_errors():
    from nodes.core.prompt_syntax import PromptSyntaxError, parse

    assert parse("a (cat:1.0) b") == parse("a cat b")
    pieces = {p.text: round(p.weight, 6) for p in parse(r"((red)) [dog] (big (cat:2):0.5) \(x\)")}
    assert pieces == {"red": 1.21, " ": 1.0, "dog": round(1 / 1.1, 6), "big ": 0.5, "cat (x)": 1.0}  # 2 x 0.5
    assert [p.text for p in parse("embedding:shiny, <glow> x") if p.embedding] == ["shiny", "glow"]
    with pytest.raises(PromptSyntaxError, match="never closed.*character 3"):
        parse("a (cat")
    with pytest.raises(PromptSyntaxError, match="closes nothing.*character 2"):
        parse("a) b")


@pytest.fixture(scope="module")
def sd1_encoder(manager):
    from nodes.core.conditioning import PromptEncoder

    def lookup(name):
        known = {m.name: m.id for m in manager.list("embedding")}
        if name not in known:
            raise KeyError(f"no embedding '{name}'")
        return manager.load(known[name])

    return PromptEncoder(manager.load("tiny-sd1"), "sd1", embeddings=lookup)


def test_unweighted_prompt_equals_the_diffusers_pipeline_encoding(manager, sd1_encoder):
    pipe = manager.load("tiny-sd1")
    with torch.inference_mode():
        expected, _ = pipe.encode_prompt("a red cube", "cpu", 1, False)
    assert torch.equal(sd1_encoder.encode("a red cube")["embeds"], expected)
    assert torch.equal(sd1_encoder.encode("a (red:1.0) cube")["embeds"], expected)


def test_a_weighted_token_moves_away_from_the_empty_prompt_by_its_weight(sd1_encoder):
    plain = sd1_encoder.encode("a red cube")
    weighted = sd1_encoder.encode("a (red:1.5) cube")["embeds"]
    empty = plain["empty"]
    red = 2  # [BOS] a red cube
    torch.testing.assert_close(weighted[0, red], empty[0, red] + 1.5 * (plain["embeds"][0, red] - empty[0, red]))
    others = [i for i in range(77) if i != red]
    assert torch.equal(weighted[0, others], plain["embeds"][0, others])


def test_a_200_token_prompt_is_encoded_in_chunks_and_not_truncated(sd1_encoder):
    words = " ".join(f"word{i % 10}" for i in range(100))  # each "wordN" is 2 tokens: 200 tokens
    long = sd1_encoder.encode(words)["embeds"]
    assert long.shape == (1, 77 * 3, 32)
    changed = sd1_encoder.encode(words + " cat")["embeds"]
    assert torch.equal(changed[:, :154], long[:, :154]) and not torch.equal(changed[:, 154:], long[:, 154:])


@pytest.mark.parametrize("name", ["shiny", "matte", "glow"])
def test_an_embedding_replaces_its_tokens_by_its_vectors(manager, sd1_encoder, name):
    plain = sd1_encoder.encode("a photo")["embeds"]
    assert torch.equal(sd1_encoder.encode(f"a photo embedding:{name}")["embeds"], sd1_encoder.encode(f"a photo <{name}>")["embeds"])
    assert not torch.equal(sd1_encoder.encode(f"a photo embedding:{name}")["embeds"], plain)
    vectors = manager.load(next(m.id for m in manager.list("embedding") if m.name == name)).vectors["*"]
    assert vectors.shape == ((1 if name == "glow" else 2), 32)


def test_unknown_embedding_and_clip_skip(sd1_encoder):
    from nodes.core.conditioning import PromptEncoder
    from nodes.core.prompt_syntax import PromptSyntaxError

    with pytest.raises(PromptSyntaxError, match="no embedding 'nope'.*character 3"):
        sd1_encoder.encode("a embedding:nope")
    skipped = PromptEncoder(sd1_encoder.pipe, "sd1", skip=1).encode("a red cube")["embeds"]
    assert skipped.shape == (1, 77, 32) and not torch.equal(skipped, sd1_encoder.encode("a red cube")["embeds"])


# --------------------------------------------------------------------------------------------
# Samplers


def test_every_sampler_and_schedule_runs_finite_and_deterministic(manager, sd1_encoder):
    from nodes.core.diffusion import SAMPLERS, SCHEDULES, DenoiseRequest, denoise, supports_schedule

    pipe = manager.load("tiny-sd1")
    positive, negative = sd1_encoder.encode("a red cube"), sd1_encoder.encode("")
    results = {}
    for sampler in SAMPLERS:
        for schedule in SCHEDULES:
            if not supports_schedule(sampler, schedule):
                continue
            request = DenoiseRequest(positive=positive, negative=negative, latents=torch.zeros(1, 4, 8, 8), seed=5,
                                     steps=3, sampler=sampler, schedule=schedule)
            first = denoise(pipe.unet, "sd1", pipe.scheduler.config, request, lambda *a: None)
            again = denoise(pipe.unet, "sd1", pipe.scheduler.config, request, lambda *a: None)
            assert torch.isfinite(first).all(), (sampler, schedule)
            assert torch.equal(first, again), (sampler, schedule)
            results[(sampler, schedule)] = first
    assert {s for s, _ in results} == set(SAMPLERS)
    assert len({r.sum().item() for r in results.values()}) > len(SAMPLERS) // 2  # they are not all one sampler
    assert ("euler", "karras") in results and ("dpmpp_2m", "exponential") in results and ("euler_a", "karras") not in results


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


def run_graph(invoker, nodes, links, timeout=180):
    """nodes: {id: values}; links: [(from, field, to, field)]."""
    session = invoker.create_session()
    added: set[str] = set()
    while len(added) < len(nodes):  # a node is added once every node it links from is
        for node_id, values in nodes.items():
            if node_id not in added and all(f in added for f, _, t, _ in links if t == node_id):
                session.add_node({"id": node_id, **values}, [(f, ff, tf) for f, ff, t, tf in links if t == node_id])
                added.add(node_id)
    invoker.invoke(session)
    assert invoker.wait(session.id, timeout)
    return session


def image_of(services, session, node_id) -> np.ndarray:
    row = session.results[node_id][0]
    assert row.state in ("completed", "cached"), row.error
    return np.asarray(services.images.get(row.outputs["image"]["image_name"]))


def txt2img_graph(model="tiny-sd1", prompt="sdxl_prompt", size=64, sampler="euler_a", loras=(), steps=3, seed=1):
    """loader -> [lora_loader...] -> prompts -> empty latent -> denoise -> decode, as node values and links."""
    nodes = {"model": {"type": "main_model_loader", "model": model},
             "pos": {"type": prompt, "prompt": "a red cube"}, "neg": {"type": prompt, "prompt": ""},
             "empty": {"type": "empty_latent", "width": size, "height": size},
             "denoise": {"type": "denoise_latents", "steps": steps, "cfg_scale": 7.5, "sampler": sampler, "seed": seed},
             "decode": {"type": "vae_decode"}}
    links = [("model", "vae", "decode", "vae"), ("empty", "latents", "denoise", "latents"),
             ("pos", "conditioning", "denoise", "positive"), ("neg", "conditioning", "denoise", "negative"),
             ("denoise", "latents", "decode", "latents")]
    source = "model"
    for n, (lora, weight) in enumerate(loras):
        nodes[f"lora{n}"] = {"type": "lora_loader", "lora": lora, "unet_weight": weight, "clip_weight": weight}
        links += [(source, "unet", f"lora{n}", "unet"), (source, "clip", f"lora{n}", "clip")]
        source = f"lora{n}"
    links += [(source, "unet", "denoise", "unet"), (source, "clip", "pos", "clip"), (source, "clip", "neg", "clip")]
    return nodes, links


def test_the_granular_graph_draws_the_txt2img_nodes_pixels(invoker, services):
    nodes, links = txt2img_graph(prompt="prompt")
    nodes["txt2img"] = {"type": "txt2img", "model": "tiny-sd1", "prompt": "a red cube", "steps": 3, "width": 64,
                        "height": 64, "scheduler": "euler_a", "seed": 1}
    session = run_graph(invoker, nodes, links)
    assert np.array_equal(image_of(services, session, "decode"), image_of(services, session, "txt2img"))


def test_sdxl_base_then_refiner_second_pass(invoker, services):
    nodes, links = txt2img_graph(model="tiny-sdxl", steps=4)
    nodes["denoise"].update(denoise_end=0.5)
    nodes.update({"refiner": {"type": "main_model_loader", "model": "tiny-refiner"},
                  "r_pos": {"type": "sdxl_prompt", "prompt": "a red (cube:1.2)"}, "r_neg": {"type": "sdxl_prompt"},
                  "finish": {"type": "denoise_latents", "steps": 4, "denoise_start": 0.5, "add_noise": False, "seed": 1,
                             "sampler": "euler_a"}})
    nodes["decode"]["tiled"] = True
    links = [link for link in links if link[2] != "decode" or link[3] != "latents"]
    links += [("refiner", "clip", "r_pos", "clip"), ("refiner", "clip", "r_neg", "clip"), ("refiner", "unet", "finish", "unet"),
              ("r_pos", "conditioning", "finish", "positive"), ("r_neg", "conditioning", "finish", "negative"),
              ("denoise", "latents", "finish", "latents"), ("finish", "latents", "decode", "latents")]
    session = run_graph(invoker, nodes, links)
    assert image_of(services, session, "decode").shape == (64, 64, 3)
    assert session.results["finish"][0].state == "completed"
    refused = run_graph(invoker, {"t": {"type": "txt2img", "model": "tiny-refiner", "steps": 2, "width": 64, "height": 64}}, [])
    assert "field 'model'" in refused.results["t"][0].error and "refiner" in refused.results["t"][0].error


def test_lora_weight_zero_is_the_base_and_two_branches_differ(invoker, services):
    base_nodes, base_links = txt2img_graph(prompt="prompt")
    session = run_graph(invoker, base_nodes, base_links)
    base = image_of(services, session, "decode")
    images = []
    for stack in ([("loras-kohya-sd1", 0.0)], [("loras-kohya-sd1", 1.0)], [("loras-kohya-sd1", 1.0), ("loras-peft-sd1", 0.5)]):
        nodes, links = txt2img_graph(prompt="prompt", loras=stack)
        images.append(image_of(services, run_graph(invoker, nodes, links), "decode"))
    assert np.array_equal(images[0], base)
    assert not np.array_equal(images[1], base) and not np.array_equal(images[2], images[1])
    services.cache.clear()  # draw the base again with the model the LoRAs were applied to: it is unchanged
    assert np.array_equal(image_of(services, run_graph(invoker, base_nodes, base_links), "decode"), base)


def test_hires_fix_graph(invoker, services):
    nodes, links = txt2img_graph(prompt="prompt")
    nodes.update({"upscale": {"type": "latent_upscale", "scale": 2.0},
                  "hires": {"type": "denoise_latents", "steps": 4, "denoise_start": 0.5, "seed": 2}})
    links = [link for link in links if link[2] != "decode" or link[3] != "latents"]
    links += [("denoise", "latents", "upscale", "latents"), ("upscale", "latents", "hires", "latents"),
              ("model", "unet", "hires", "unet"), ("pos", "conditioning", "hires", "positive"),
              ("neg", "conditioning", "hires", "negative"), ("hires", "latents", "decode", "latents")]
    session = run_graph(invoker, nodes, links)
    assert image_of(services, session, "decode").shape == (128, 128, 3)
    assert session.results["upscale"][0].outputs["width"] == 128


def test_bad_inputs_fail_naming_node_field_and_position(invoker, services):
    nodes, links = txt2img_graph(prompt="prompt")
    nodes["pos"]["prompt"] = "a (red cube"
    session = run_graph(invoker, nodes, links)
    error = session.results["pos"][0].error
    assert "node 'pos' (prompt), field 'prompt'" in error and "character 3" in error
    nodes, links = txt2img_graph(prompt="prompt")
    nodes["denoise"].update(schedule="karras", sampler="euler_a")
    session = run_graph(invoker, nodes, links)
    assert "field 'schedule'" in session.results["denoise"][0].error
    nodes, links = txt2img_graph(prompt="sdxl_prompt")  # SDXL prompt nodes on an SD 1.x model
    session = run_graph(invoker, nodes, links)
    assert "field 'clip'" in session.results["pos"][0].error and "prompt node" in session.results["pos"][0].error
    nodes, links = txt2img_graph(prompt="prompt", loras=[("loras-kohya-sdxl", 1.0)])
    session = run_graph(invoker, nodes, links)
    error = session.results["denoise"][0].error  # (its CLIP-L layers fit SD 1.x's text encoder, as in real files)
    assert "node 'denoise'" in error and "field 'unet'" in error and "loras-kohya-sdxl" in error


def test_vae_encode_decode_and_embeddings_in_a_graph(invoker, services):
    nodes = {"image": {"type": "noise_image", "width": 72, "height": 64, "seed": 3},
             "model": {"type": "main_model_loader", "model": "tiny-sd1"},
             "encode": {"type": "vae_encode"}, "decode": {"type": "vae_decode"},
             "prompt": {"type": "prompt", "prompt": "a <shiny> (embedding:glow:1.2) cube"}}
    links = [("image", "image", "encode", "image"), ("model", "vae", "encode", "vae"), ("model", "vae", "decode", "vae"),
             ("encode", "latents", "decode", "latents"), ("model", "clip", "prompt", "clip")]
    session = run_graph(invoker, nodes, links)
    assert image_of(services, session, "decode").shape == (64, 72, 3)
    assert session.results["prompt"][0].state == "completed", session.results["prompt"][0].error


def test_latent_blend_crop_and_a_latent_noise_mask_keeps_the_unmasked_latents(invoker, services):
    nodes = {"model": {"type": "main_model_loader", "model": "tiny-sd1"},
             "image": {"type": "noise_image", "width": 64, "height": 64, "seed": 3},
             "encode": {"type": "vae_encode"}, "empty": {"type": "empty_latent", "width": 64, "height": 64},
             "blend": {"type": "latent_blend", "alpha": 0.25}, "crop": {"type": "latent_crop", "x": 16, "y": 8, "width": 32, "height": 48},
             "black": {"type": "solid_color", "width": 64, "height": 64, "color": "black"},
             "pos": {"type": "prompt", "prompt": "x"}, "neg": {"type": "prompt"},
             "set_mask": {"type": "set_latent_noise_mask"}, "masked": {"type": "denoise_latents", "steps": 3, "seed": 1},
             "decode_masked": {"type": "vae_decode"}, "decode_source": {"type": "vae_decode"}}
    links = [("image", "image", "encode", "image"), ("model", "vae", "encode", "vae"), ("encode", "latents", "blend", "first"),
             ("empty", "latents", "blend", "second"), ("blend", "latents", "crop", "latents"),
             ("model", "clip", "pos", "clip"), ("model", "clip", "neg", "clip"), ("model", "unet", "masked", "unet"),
             ("pos", "conditioning", "masked", "positive"), ("neg", "conditioning", "masked", "negative"),
             ("encode", "latents", "set_mask", "latents"), ("black", "image", "set_mask", "mask"),
             ("set_mask", "latents", "masked", "latents"),
             ("masked", "latents", "decode_masked", "latents"), ("model", "vae", "decode_masked", "vae"),
             ("encode", "latents", "decode_source", "latents"), ("model", "vae", "decode_source", "vae")]
    session = run_graph(invoker, nodes, links)
    crop = session.results["crop"][0]
    assert crop.state == "completed", crop.error
    assert (crop.outputs["width"], crop.outputs["height"]) == (32, 48)
    # an all-black mask keeps everything: the denoised latents are the source's
    assert np.array_equal(image_of(services, session, "decode_masked"), image_of(services, session, "decode_source"))


def test_the_hires_fix_example_runs_on_the_tiny_model(invoker, services):
    from app.examples import example

    graph = example("hires_fix").graph
    nodes = {n["id"]: {k: v for k, v in n.items() if k != "id"} for n in graph["nodes"]}
    nodes["model"]["model"] = "tiny-sd1"
    nodes["empty"].update(width=64, height=64)
    nodes["denoise"]["steps"] = nodes["hires"]["steps"] = 2
    nodes["hires"]["denoise_start"] = 0.5
    links = [(l["from_node"], l["from_field"], l["to_node"], l["to_field"]) for l in graph["links"]]
    session = run_graph(invoker, nodes, links)
    assert image_of(services, session, "decode").shape == (96, 96, 3)  # 64 x 1.5


# --------------------------------------------------------------------------------------------
# Masks (PIL only)


def test_mask_nodes_and_outpaint_padding(user_root):
    from PIL import Image

    services = Services.local(Settings.load())
    invoker = Invoker(services)
    try:
        rgba = Image.new("RGBA", (32, 16), (255, 0, 0, 255))
        rgba.paste((0, 0, 0, 0), (0, 0, 8, 16))
        source = services.images.save(rgba).image_name
        nodes = {"alpha": {"type": "mask_from_alpha", "image": {"image_name": source}},
                 "red": {"type": "mask_from_color", "image": {"image_name": source}, "color": "#ff0000", "tolerance": 4},
                 "invert": {"type": "mask_invert"}, "grow": {"type": "mask_grow", "pixels": 2},
                 "shrink": {"type": "mask_shrink", "pixels": 2}, "blur": {"type": "mask_blur", "radius": 1},
                 "union": {"type": "mask_combine", "mode": "union"},
                 "pad": {"type": "image_pad_for_outpaint", "image": {"image_name": source}, "right": 16, "left": 0, "feather": 4}}
        links = [("alpha", "image", "invert", "mask"), ("alpha", "image", "grow", "mask"), ("alpha", "image", "shrink", "mask"),
                 ("alpha", "image", "blur", "mask"), ("alpha", "image", "union", "first"), ("red", "image", "union", "second")]
        session = run_graph(invoker, nodes, links)

        def mask(node, field="image"):
            row = session.results[node][0]
            assert row.state == "completed", row.error
            return np.asarray(services.images.get(row.outputs[field]["image_name"]).convert("L"))

        alpha = mask("alpha")
        assert (alpha[:, :8] == 255).all() and (alpha[:, 8:] == 0).all()  # transparent: white (to fill)
        assert np.array_equal(mask("invert"), 255 - alpha)
        assert (mask("grow")[:, :10] == 255).all() and (mask("shrink")[:, 6:] == 0).all()
        assert 0 < mask("blur")[0, 8] < 255
        assert (mask("union") == 255).all()  # transparent or red: everything
        padded = session.results["pad"][0].outputs
        assert (padded["width"], padded["height"]) == (48, 16)
        pad_mask = mask("pad", "mask")
        assert (pad_mask[:, 32:] == 255).all() and (pad_mask[:, :28] == 0).all() and 0 < pad_mask[0, 30] < 255
    finally:
        invoker.shutdown()


# --------------------------------------------------------------------------------------------
# The reference pin table


def test_every_reference_pin_type_has_its_own_colour_and_cli_form():
    from app.canvas.schema import tag_colour
    from app.cli_schema import parse_value
    from nodes.base import PIN_TYPES, REGISTRY

    colours = [tag_colour(tag) for tag in PIN_TYPES]
    assert len(set(colours)) == len(colours) and {"image", "latents", "conditioning", "unet", "clip", "vae"} <= set(PIN_TYPES)
    port = REGISTRY["denoise_latents"].inputs()["unet"]
    assert parse_value(port, "tiny-sd1") == {"model_id": "tiny-sd1"}
    assert REGISTRY["denoise_latents"].validate_value("unet", {"model_id": "m"}).loras == []


def test_the_cli_lists_loras_and_embeddings(invoker):
    import io

    from app.cli import Shell

    out, err = io.StringIO(), io.StringIO()
    shell = Shell(invoker, out, err, open_viewer=False)
    assert shell.execute("models embedding") == 0
    assert "embedding:shiny" in out.getvalue() and "embedding:glow" in out.getvalue() and "tiny-sd1" not in out.getvalue()
    assert shell.execute("models lora") == 0 and "loras-peft-sd1" in out.getvalue()
    assert shell.execute("models bogus") != 0 and "unknown model kind" in err.getvalue()
