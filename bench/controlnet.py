"""Benchmark ControlNet in the denoise_latents graph against diffusers' ControlNet pipeline, and its cost.

Random weights at SD 1.5's size (speed and equality do not depend on values): the pipeline of
bench/diffusion_graph.py, and a ControlNet made from its UNet (zero convolutions given random
weights) written as an original-layout single file, so it loads through the scanner and the
shipped config like a user's file.  Prints one JSON line per case:

- vs_pipeline: loader -> prompts -> controlnet_apply -> denoise_latents -> vae_decode against
  StableDiffusionControlNetPipeline with the same prompts, starting latents and control image (PSNR).
- cost: denoising it/s of the plain graph and of the graph with one ControlNet, eager and compiled
  (`reduce-overhead`, CUDA graphs), and the slowdown ControlNet brings.

    python bench/controlnet.py            # on a CUDA GPU, fp16
    python bench/controlnet.py --smoke    # tiny models on the CPU (eager only): checks the script itself
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.diffusion_graph import PROMPT, Runner, build, emit, graph, psnr, sync  # noqa: E402

NEGATIVE = "blurry"


def write_controlnet(models: Path, unet, smoke: bool) -> None:
    """A ControlNet from `unet` as an original-layout (control_model.*) single file."""
    from safetensors.torch import save_file

    from services.models import demo
    from services.models.checkpoints import controlnet_to_ldm

    if smoke:
        demo.write_tiny_controlnet(models / "controlnet" / "canny.safetensors", demo.tiny_controlnet(unet), "ldm")
        return
    controlnet = demo.tiny_controlnet(unet.float().cpu()).half()  # from_unet copies the encoder half
    path = models / "controlnet" / "canny.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in controlnet_to_ldm(controlnet.state_dict(), controlnet.config).items()}, str(path))
    del controlnet


def control_image(size: int) -> Image.Image:
    """White strokes on black at another size than the generation's, as an edge map."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((size * 3 // 4, size * 5 // 4, 3), np.uint8)
    for _ in range(40):
        y, x = rng.integers(0, pixels.shape[0] - 8), rng.integers(0, pixels.shape[1] - 64)
        pixels[y:y + 3, x:x + int(rng.integers(8, 64))] = 255
    return Image.fromarray(pixels)


def controlled(model: str, size: int, steps: int, image_name: str, strength: float = 1.0) -> list[tuple[dict, list]]:
    nodes = graph(model, False, size, steps)
    denoise = next(n for n in nodes if n[0]["id"] == "d")
    denoise[1][:] = [link for link in denoise[1] if link[2] not in ("positive", "negative")]
    denoise[1].extend([("a", "positive", "positive"), ("a", "negative", "negative")])
    extra = [({"id": "c", "type": "controlnet_loader", "model": "controlnet-canny"}, []),
             ({"id": "a", "type": "controlnet_apply", "image": {"image_name": image_name}, "strength": strength},
              [("p", "conditioning", "positive"), ("n", "conditioning", "negative"), ("c", "control_model", "control_model")])]
    index = nodes.index(denoise)
    return nodes[:index] + extra + nodes[index:]


def reference(runner: Runner, model: str, image: Image.Image, size: int, steps: int, device: str) -> np.ndarray:
    """diffusers' ControlNet pipeline over the same loaded modules, from the starting latents the graph draws (seed 1)."""
    from diffusers import StableDiffusionControlNetPipeline

    from nodes.core.diffusion import make_noise, make_scheduler

    manager = runner.services.models
    pipe, controlnet = manager.load(model), manager.load("controlnet-canny")
    components = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
    reference = StableDiffusionControlNetPipeline(**components, controlnet=controlnet)
    reference.scheduler = make_scheduler(pipe.scheduler.config, "euler")
    reference.set_progress_bar_config(disable=True)
    latents = make_noise(1, (1, 4, size // 8, size // 8)).to(device, pipe.unet.dtype)
    with torch.inference_mode():
        result = reference(PROMPT, negative_prompt=NEGATIVE, image=image, height=size, width=size, num_inference_steps=steps,
                           guidance_scale=7.5, latents=latents, output_type="np").images[0]
    return (result * 255).round().astype(np.uint8)


def wait_compiled(runner: Runner, model: str) -> None:
    """Background compiles of the denoiser and the ControlNet done (the timed runs then use them)."""
    from nodes.core.diffusion import wait_for_compiled

    manager = runner.services.models
    for loaded in (manager.load(model).unet, manager.load("controlnet-canny")):
        wait_for_compiled(loaded, 900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, few steps (checks the script)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each case (the best is reported)")
    parser.add_argument("--eager-only", action="store_true", help="skip the compiled case (three background compiles)")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke for a CPU check", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-controlnet-"))
    models = root / "models"
    emit("environment", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__)
    from services.models import demo

    started = time.perf_counter()
    if args.smoke:
        demo.write_tiny_sd1_diffusers(models / "sd1-random")
        write_controlnet(models, demo.tiny_unet(), smoke=True)
        size, steps, modes = 64, 3, ("off",)
    else:
        build(models, root / "configs", "sd1")
        from diffusers import UNet2DConditionModel

        write_controlnet(models, UNet2DConditionModel.from_pretrained(models / "sd1-random" / "unet"), smoke=False)
        size, steps, modes = 512, 30, ("off",) if args.eager_only else ("off", "reduce-overhead")
    emit("build_random_models", seconds=round(time.perf_counter() - started, 1))
    runner = Runner(root, models, device)
    image = control_image(size)
    image_name = runner.services.images.save(image).image_name
    model = "sd1-random"

    os.environ["INVOKE_NODES_COMPILE"] = "off"
    ours, _, _ = runner.run(controlled(model, size, steps, image_name), "v")
    expected = reference(runner, model, image, size, steps, device)
    plain, _, _ = runner.run(graph(model, False, size, steps), "v")
    emit("vs_pipeline", model=model, size=size, steps=steps, psnr_db=psnr(ours, expected),
         psnr_db_vs_no_control=psnr(ours, plain))

    for mode in modes:
        os.environ["INVOKE_NODES_COMPILE"] = mode
        runner.run(graph(model, False, size, 3), "v")  # warm-up: starts the compiles (in the background)
        runner.run(controlled(model, size, 3, image_name), "v")
        wait_compiled(runner, model)
        plain_rates, control_rates, plain_walls, control_walls = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            _, wall, it_s = runner.run(graph(model, False, size, steps), "v")
            plain_walls.append(wall), plain_rates.append(it_s)
            _, wall, it_s = runner.run(controlled(model, size, steps, image_name), "v")
            control_walls.append(wall), control_rates.append(it_s)
        sync()
        emit("cost", compile=mode, size=size, steps=steps, plain_it_per_s=max(plain_rates),
             controlnet_it_per_s=max(control_rates),
             slower_percent=round(100 * (max(plain_rates) / max(control_rates) - 1), 1),
             plain_seconds=round(min(plain_walls), 3), controlnet_seconds=round(min(control_walls), 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
