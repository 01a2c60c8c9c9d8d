"""Benchmark the granular diffusion graph against the txt2img node, and LoRA application.

Random weights at the real sizes (speed and equality do not depend on values): SD 1.5 and SDXL
built from the shipped config folders, saved as diffusers folders and run through the real
services and invoker (in-process executor).  Prints one JSON line per case:

- graph_vs_node: main_model_loader -> prompt x2 -> empty_latent -> denoise_latents -> vae_decode
  against txt2img with the same settings: PSNR of the two images, node wall seconds, it/s.
- lora_apply: adding an SD 1.5-size rank-32 LoRA to the UNet and restoring it (seconds), and
  whether the base weights are bit-identical afterwards.
- lora_switch: graph runs with LoRA weights 1.0 then 0.5: wall seconds, and whether the base
  model was loaded again (it must not be).

    python bench/diffusion_graph.py            # on a CUDA GPU, fp16
    python bench/diffusion_graph.py --smoke    # tiny models on the CPU: checks the script itself
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"


def emit(case: str, **data) -> None:
    print(json.dumps({"case": case, **data}), flush=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float | str:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "inf" if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(models: Path, cache: Path, base: str) -> None:
    """A full-size random-weight pipeline of `base` (sd1 or sdxl), fp16, as a diffusers folder."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from services.models.configs import config_folder

    config = config_folder(base, cache)
    torch.manual_seed(0)
    with torch.device("cuda"):
        parts = {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")).half(),
                 "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).half(),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")).half()}
        if base == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(config / "text_encoder_2")).half()
    scheduler = EulerDiscreteScheduler.from_pretrained(config / "scheduler")
    if base == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts, tokenizer=CLIPTokenizer.from_pretrained(config / "tokenizer"),
                                         tokenizer_2=CLIPTokenizer.from_pretrained(config / "tokenizer_2"), scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(**parts, tokenizer=CLIPTokenizer.from_pretrained(config / "tokenizer"),
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(models / f"{base}-random", safe_serialization=True)
    del pipe, parts
    torch.cuda.empty_cache()


class Runner:
    def __init__(self, root: Path, models: Path, device: str) -> None:
        from services.config import Settings
        from services.container import Services
        from services.engine.events import NODE_PROGRESS
        from services.invoker import Invoker

        settings = Settings(data_dir=root, config_dir=root / "config", models_dir=models, outputs_dir=root / "outputs",
                            sessions_dir=root / "sessions", plugins_dir=root / "plugins", device=device,
                            ram_cache_gb=64, vram_cache_gb=100)
        self.services = Services.local(settings)
        self.invoker = Invoker(self.services, start=False)
        self.progress_type = NODE_PROGRESS

    def run(self, nodes: list[tuple[dict, list]], image_node: str) -> tuple[np.ndarray, float, float]:
        """(image, wall seconds, denoising it/s) of one session run from an empty output cache."""
        self.services.cache.clear()
        session = self.invoker.create_session()
        stamps: list[float] = []
        token = self.services.events.subscribe(
            lambda e: stamps.append(time.perf_counter()) if e.type == self.progress_type else None, session.id)
        for data, links in nodes:
            session.add_node(data, links)
        sync()
        started = time.perf_counter()
        self.invoker.run(session)
        sync()
        wall = time.perf_counter() - started
        self.services.events.unsubscribe(token)
        for node_id, rows in session.results.items():
            if rows[0].state not in ("completed", "cached"):
                raise RuntimeError(f"node {node_id}: {rows[0].error}")
        row = session.results[image_node][0]
        image = np.asarray(self.services.images.get(row.outputs["image"]["image_name"]))
        it_s = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
        return image, wall, round(it_s, 2)


def node(model: str, size: int, steps: int) -> list[tuple[dict, list]]:
    return [({"id": "t", "type": "txt2img", "model": model, "prompt": PROMPT, "negative_prompt": "blurry", "steps": steps,
              "width": size, "height": size, "seed": 1, "cfg_scale": 7.5, "scheduler": "euler"}, [])]


def graph(model: str, sdxl: bool, size: int, steps: int, lora: tuple[str, float] | None = None) -> list[tuple[dict, list]]:
    prompt = "sdxl_prompt" if sdxl else "prompt"
    source = "m"
    nodes = [({"id": "m", "type": "main_model_loader", "model": model}, [])]
    if lora:
        nodes.append(({"id": "l", "type": "lora_loader", "lora": lora[0], "unet_weight": lora[1], "clip_weight": lora[1]},
                      [("m", "unet", "unet"), ("m", "clip", "clip")]))
        source = "l"
    nodes += [({"id": "p", "type": prompt, "prompt": PROMPT}, [(source, "clip", "clip")]),
              ({"id": "n", "type": prompt, "prompt": "blurry"}, [(source, "clip", "clip")]),
              ({"id": "e", "type": "empty_latent", "width": size, "height": size}, []),
              ({"id": "d", "type": "denoise_latents", "steps": steps, "cfg_scale": 7.5, "sampler": "euler", "seed": 1},
               [(source, "unet", "unet"), ("p", "conditioning", "positive"), ("n", "conditioning", "negative"),
                ("e", "latents", "latents")]),
              ({"id": "v", "type": "vae_decode"}, [("m", "vae", "vae"), ("d", "latents", "latents")])]
    return nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, few steps (checks the script)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each case (the best is reported)")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke for a CPU check", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    models = root / "models"
    emit("environment", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__)
    from services.models import demo

    started = time.perf_counter()
    if args.smoke:
        demo.write_tiny_sd1_diffusers(models / "sd1-random")
        demo.write_tiny_sdxl_diffusers(models / "sdxl-random")
        cases = [("sd1-random", False, 64, 3), ("sdxl-random", True, 64, 3)]
    else:
        build(models, root / "configs", "sd1")
        build(models, root / "configs", "sdxl")
        cases = [("sd1-random", False, 512, 30), ("sdxl-random", True, 1024, 30)]
    emit("build_random_models", seconds=round(time.perf_counter() - started, 1))
    runner = Runner(root, models, device)
    manager = runner.services.models

    for model, sdxl, size, steps in cases:
        runner.run(node(model, size, 3), "t")  # warm-up: loading, cuDNN choices
        runner.run(graph(model, sdxl, size, 3), "v")
        node_walls, graph_walls, node_rates, graph_rates = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            node_image, wall, it_s = runner.run(node(model, size, steps), "t")
            node_walls.append(wall), node_rates.append(it_s)
            graph_image, wall, it_s = runner.run(graph(model, sdxl, size, steps), "v")
            graph_walls.append(wall), graph_rates.append(it_s)
        emit("graph_vs_node", model=model, size=size, steps=steps, psnr_db=psnr(graph_image, node_image),
             node_seconds=round(min(node_walls), 3), graph_seconds=round(min(graph_walls), 3),
             slower_percent=round(100 * (min(graph_walls) / min(node_walls) - 1), 2),
             node_it_per_s=max(node_rates), graph_it_per_s=max(graph_rates))

    # LoRA: an SD 1.5-size rank-32 kohya file over the attention layers of the UNet and text encoder
    from nodes.core.lora import applied

    pipe = manager.load("sd1-random")
    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    rank = 4 if args.smoke else 32
    demo.write_tiny_lora(models / "loras" / "rank32.safetensors", {k: v.float() if device == "cpu" else v for k, v in parts.items()},
                         "kohya", rank=rank)
    manager.rescan()
    lora = manager.load("loras-rank32")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    timings = []
    for _ in range(args.repeats):
        sync()
        started = time.perf_counter()
        with applied({"unet": pipe.unet}, [(lora, 1.0)]) as changed:
            sync()
            applied_at = time.perf_counter()
        sync()
        timings.append((applied_at - started, time.perf_counter() - applied_at))
    identical = all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in before.items())
    del before
    emit("lora_apply", rank=rank, layers=changed, lora_mib=round(lora.nbytes() / 2**20, 1),
         apply_seconds=round(min(t[0] for t in timings), 4), restore_seconds=round(min(t[1] for t in timings), 4),
         base_bit_identical=identical)

    model, sdxl, size, steps = cases[0]
    read = count_loads()
    runs = {}
    for weight in (1.0, 0.5, 0.0):
        image, wall, it_s = runner.run(graph(model, sdxl, size, steps, ("loras-rank32", weight)), "v")
        runs[weight] = (image, wall, it_s)
    base_image, base_wall, _ = runner.run(graph(model, sdxl, size, steps), "v")
    emit("lora_switch", weights=[1.0, 0.5, 0.0], seconds=[round(runs[w][1], 3) for w in runs],
         it_per_s=[runs[w][2] for w in runs], no_lora_seconds=round(base_wall, 3),
         models_read_from_disk=read,
         weight_0_equals_base=bool(np.array_equal(runs[0.0][0], base_image)),
         weights_differ=not np.array_equal(runs[1.0][0], runs[0.5][0]))
    return 0


def count_loads() -> list[str]:
    """Model ids the manager reads from disk from now on (it imports load_from_disk when it loads)."""
    from services.models import loading

    read: list[str] = []
    original = loading.load_from_disk

    def counting(info, *args, **kwargs):
        read.append(info.id)
        return original(info, *args, **kwargs)

    loading.load_from_disk = counting
    return read


if __name__ == "__main__":
    raise SystemExit(main())
