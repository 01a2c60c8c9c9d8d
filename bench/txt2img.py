"""Benchmark the txt2img node against plain diffusers on an SD 1.5-architecture model.

Random weights (speed does not depend on values): the full-size SD 1.5 UNet, VAE and CLIP text
encoder are built from the shipped config folder on the GPU, saved as a diffusers folder and as
an original-layout single file, and loaded back through the model manager (timed).  Prints one
JSON line per case.  it/s counts denoising steps between the first and the last progress event.

    python bench/txt2img.py            # on a CUDA GPU, fp16
    python bench/txt2img.py --smoke    # tiny model on the CPU: checks the script itself
    python bench/txt2img.py --worker   # the node in this process vs in the AI worker process (as the canvas runs it)
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
COMPILE_MODE = "reduce-overhead"


def emit(case: str, **data) -> None:
    print(json.dumps({"case": case, **data}), flush=True)


def psnr(a: np.ndarray, b: np.ndarray) -> float | str:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "inf" if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def rate(stamps: list[float]) -> float:
    return round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2) if len(stamps) > 1 else float("nan")


def build_sd15(models: Path, cache: Path, device: str) -> None:
    """Full-size SD 1.5 with random weights, written as a diffusers folder and an SD single file."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from services.models.checkpoints import sd1_to_ldm
    from services.models.configs import config_folder

    config = config_folder("sd1", cache)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet")).half()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae")).half()
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder")).half()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(config / "tokenizer"),
                                   unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(config / "scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(models / "sd15-random", safe_serialization=True)
    save_file(sd1_to_ldm(unet, vae, text), str(models / "sd15-random-single.safetensors"))


def drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class NodeRunner:
    """Runs txt2img nodes through the real services and invoker, timing the progress events."""

    def __init__(self, root: Path, models: Path, device: str, data_dir: Path, executor: str = "in-process") -> None:
        from services.config import Settings
        from services.container import Services
        from services.engine.events import NODE_PROGRESS
        from services.invoker import Invoker

        settings = Settings(data_dir=data_dir, config_dir=root / "config", models_dir=models, outputs_dir=root / "outputs",
                            sessions_dir=root / "sessions", plugins_dir=root / "plugins", device=device,
                            ram_cache_gb=32, vram_cache_gb=40)
        self.services = Services.local(settings, executor=executor)
        self.invoker = Invoker(self.services, start=False)
        self.progress_type = NODE_PROGRESS

    def run(self, model: str, size: int, steps: int, seed: int, compile_mode: str) -> tuple[np.ndarray, list[float], float]:
        os.environ["INVOKE_NODES_COMPILE"] = compile_mode
        self.services.cache.clear()
        session = self.invoker.create_session()
        stamps: list[float] = []
        token = self.services.events.subscribe(
            lambda e: stamps.append(time.perf_counter()) if e.type == self.progress_type else None, session.id)
        session.add_node({"type": "txt2img", "model": model, "prompt": PROMPT, "steps": steps, "width": size,
                          "height": size, "seed": seed, "cfg_scale": 7.5, "scheduler": "euler"})
        started = time.perf_counter()
        self.invoker.run(session)
        wall = time.perf_counter() - started
        self.services.events.unsubscribe(token)
        row = session.results["1"][0]
        if row.state != "completed":
            raise RuntimeError(f"txt2img {row.state}: {row.error}")
        image = np.asarray(self.services.images.get(row.outputs["image"]["image_name"]))
        return image, stamps, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, few steps (checks the script)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 1024x1024 and batch-4 cases")
    parser.add_argument("--large-only", action="store_true", help="only the 1024x1024 and batch-4 cases")
    parser.add_argument("--worker", action="store_true",
                        help="only: the node in this process vs in the AI worker process, eager and compiled")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "invoke-nodes-bench",
                        help="app data folder; its cache keeps compiled kernels for the next run")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke for a CPU check", file=sys.stderr)
        return 2
    steps, size, large = (3, 64, 128) if args.smoke else (30, 512, 1024)
    model = "tiny-sd1" if args.smoke else "sd15-random"
    root = Path(tempfile.mkdtemp(prefix="bench-txt2img-"))
    models = root / "models"
    emit("environment", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
         dtype="float16" if device == "cuda" else "float32", steps=steps, compile_mode=COMPILE_MODE)

    started = time.perf_counter()
    if args.smoke:
        from services.models.demo import write_tiny_sd1_diffusers

        write_tiny_sd1_diffusers(models / model)
    else:
        build_sd15(models, root / "configs", device)
    emit("build_random_model", seconds=round(time.perf_counter() - started, 1))
    torch.cuda.empty_cache() if device == "cuda" else None

    # compiled kernels go where TORCHINDUCTOR_CACHE_DIR says, else into the app's cache folder
    kernel_dir = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or args.data_dir / "cache" / "torchinductor")
    kernels_cached = kernel_dir.is_dir()  # left by an earlier run
    if args.worker:
        worker_cases(root, models, device, args.data_dir, model, size, steps)
        return 0
    runner = NodeRunner(root, models, device, args.data_dir)
    manager = runner.services.models
    loads = {"diffusers_folder": model} if args.smoke else {"diffusers_folder": model, "single_file": "sd15-random-single"}
    for what, model_id in loads.items():
        cold = drop_page_cache() if device == "cuda" else False  # never on a shared development machine
        started = time.perf_counter()
        manager.load(model_id)
        torch.cuda.synchronize() if device == "cuda" else None
        emit("load_from_disk", format=what, seconds=round(time.perf_counter() - started, 2), page_cache_dropped=cold,
             size_gib=round(manager.get(model_id).size_bytes / 2**30, 2))
    pipe = manager.load(model)
    if args.large_only:
        large_cases(runner, model, pipe, large, size, steps)
        return 0

    # plain diffusers on the same weights, before the node tunes the UNet in place
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    plain = StableDiffusionPipeline(**{**pipe.components, "scheduler": EulerDiscreteScheduler.from_config(pipe.scheduler.config)})
    plain.set_progress_bar_config(disable=True)

    def diffusers_run(n_steps: int) -> list[float]:
        stamps: list[float] = []

        def on_step(_pipe, _i, _t, kwargs):
            stamps.append(time.perf_counter())
            return kwargs

        generator = torch.Generator("cpu").manual_seed(1)
        plain(PROMPT, num_inference_steps=n_steps, guidance_scale=7.5, height=size, width=size, generator=generator,
              callback_on_step_end=on_step)
        return stamps

    diffusers_run(3)  # warm-up (cuDNN/cuBLAS choices)
    reset_peak()
    emit("diffusers_eager", size=size, batch=1, it_per_s=rate(diffusers_run(steps)), peak_gib=peak_gib())

    runner.run(model, size, 3, 1, "off")  # warm-up
    reset_peak()
    eager, stamps, wall = runner.run(model, size, steps, 1, "off")
    emit("node_eager", size=size, batch=1, it_per_s=rate(stamps), node_seconds=round(wall, 2), peak_gib=peak_gib())

    started = time.perf_counter()
    runner.run(model, size, steps, 1, COMPILE_MODE)
    first_wall = time.perf_counter() - started
    reset_peak()
    compiled, stamps, wall = runner.run(model, size, steps, 1, COMPILE_MODE)
    compiled_again, stamps_again, _ = runner.run(model, size, steps, 1, COMPILE_MODE)
    emit("node_compiled", size=size, batch=1, it_per_s=max(rate(stamps), rate(stamps_again)), node_seconds=round(wall, 2),
         compile_seconds=round(first_wall - wall, 1), kernel_cache_from_earlier_run=kernels_cached,
         psnr_vs_eager_db=psnr(compiled, eager),
         repeat_identical=bool(np.array_equal(compiled, compiled_again)), peak_gib=peak_gib())

    if not args.skip_large:
        large_cases(runner, model, pipe, large, size, steps)
    return 0


def worker_cases(root: Path, models: Path, device: str, data_dir: Path, model: str, size: int, steps: int) -> None:
    """The txt2img node's it/s in this process and through the AI worker (issue 11: within 3%), for
    each compile mode; the worker reads the compile mode when it starts, so each mode gets its own."""
    for mode in ("off", COMPILE_MODE):
        os.environ["INVOKE_NODES_COMPILE"] = mode
        results = {}
        for executor in ("in-process", "worker"):
            runner = NodeRunner(root, models, device, data_dir, executor)
            started = time.perf_counter()
            runner.run(model, size, steps, 1, mode)  # load (and compile) outside the timing
            first = time.perf_counter() - started
            runs = [runner.run(model, size, steps, 1, mode) for _ in range(3)]
            best = max(rate(stamps) for _, stamps, _ in runs)
            results[executor] = (best, runs[0][0])
            emit(f"node_{'eager' if mode == 'off' else 'compiled'}_{executor.replace('-', '_')}", size=size,
                 it_per_s=best, runs_it_per_s=[rate(s) for _, s, _ in runs], first_run_seconds=round(first, 1))
            runner.invoker.shutdown()
        emit("worker_vs_in_process", compile_mode=mode,
             ratio=round(results["worker"][0] / results["in-process"][0], 4),
             identical_pixels=bool(np.array_equal(results["worker"][1], results["in-process"][1])),
             psnr_db=psnr(results["worker"][1], results["in-process"][1]))


def large_cases(runner: NodeRunner, model: str, pipe, large: int, size: int, steps: int) -> None:
    """1024x1024 through the node, and batch 4 through the same Generator the node uses."""
    from nodes.core.diffusion import GenerationRequest, Generator

    for mode in ("off", COMPILE_MODE):
        started = time.perf_counter()
        runner.run(model, large, 3 if mode == "off" else steps, 2, mode)  # warm-up / compile for this shape
        warm = time.perf_counter() - started
        reset_peak()
        _, stamps, wall = runner.run(model, large, steps, 2, mode)
        emit(f"node_{'eager' if mode == 'off' else 'compiled'}", size=large, batch=1, it_per_s=rate(stamps),
             node_seconds=round(wall, 2), first_run_seconds=round(warm, 1), peak_gib=peak_gib())

    manager = runner.services.models
    for mode in ("off", COMPILE_MODE):
        generator = Generator(pipe, "sd1", compile_mode=mode, cache_dir=manager.cache_dir)
        stamps: list[float] = []
        request = GenerationRequest(prompt=PROMPT, steps=steps, width=size, height=size, seed=3, batch_size=4)
        started = time.perf_counter()
        generator.run(request, lambda *_: None)  # warm-up / compile for this shape
        warm = time.perf_counter() - started
        reset_peak()
        images = generator.run(request, lambda *_: stamps.append(time.perf_counter()))
        emit(f"generator_{'eager' if mode == 'off' else 'compiled'}", size=size, batch=len(images),
             it_per_s=rate(stamps), images_per_s=round(rate(stamps) * len(images) / steps, 2),
             first_run_seconds=round(warm, 1), peak_gib=peak_gib())


if __name__ == "__main__":
    sys.exit(main())
