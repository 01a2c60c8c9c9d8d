"""Benchmark the txt2img node against plain diffusers on an SD 1.5-architecture model.

Random weights (speed does not depend on values): the full-size SD 1.5 UNet, VAE and CLIP text
encoder are built from the shipped config folder on the GPU, saved as a diffusers folder and
loaded back through the model manager, as a user's model is.  Prints one JSON line per case.  it/s counts denoising steps between the first and the last progress event.

    python bench/txt2img.py             # on a CUDA GPU, fp16: default settings, then 1024 / batch 4, then SDXL
    python bench/txt2img.py --defaults  # only default settings (compile in the background) vs plain diffusers
    python bench/txt2img.py --large     # only 1024x1024 and batch 4 (--shape 1024 or batch4: one of them)
    python bench/txt2img.py --sdxl      # only SDXL 1024 first and warm calls, prompt in -> PNG on disk
    python bench/txt2img.py --cpu       # SD 1.5 size on this CPU: a few steps, and what is free to speed it up
    python bench/txt2img.py --worker    # the node in this process vs in the AI worker process (as the canvas runs it)
    python bench/txt2img.py --profile   # where a compiled step's GPU time goes: the kernels that take most
    python bench/txt2img.py --smoke     # tiny model on the CPU (compiled on the CPU): checks the script itself
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"
COMPILE_MODE = "reduce-overhead"  # what the default ("auto") compiles with on a GPU
# A user building a graph after launch: the AI worker imports torch's compiler meanwhile (4-7 s on the
# H200 host), after the imports a node waits for.
USER_PAUSE_S = 15


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
    """Full-size SD 1.5 with random weights, written as a diffusers folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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

    def run(self, model: str, size: int, steps: int, seed: int, compile_mode: str | None) -> tuple[np.ndarray, list[float], float]:
        """(image, progress time stamps, seconds from prompt in to PNG on disk); compile_mode None: the settings' default."""
        if compile_mode is None:
            os.environ.pop("INVOKE_NODES_COMPILE", None)
        else:
            os.environ["INVOKE_NODES_COMPILE"] = compile_mode
        outputs, stamps, wall = self.run_node({"type": "txt2img", "model": model, "prompt": PROMPT, "steps": steps,
                                               "width": size, "height": size, "seed": seed, "cfg_scale": 7.5,
                                               "scheduler": "euler"})
        return np.asarray(self.services.images.get(outputs["image"]["image_name"])), stamps, wall

    def run_node(self, node: dict[str, Any]) -> tuple[dict[str, Any], list[float], float]:
        """One node in a new session: (its outputs, progress time stamps, seconds it took)."""
        self.services.cache.clear()
        session = self.invoker.create_session()
        stamps: list[float] = []
        token = self.services.events.subscribe(
            lambda e: stamps.append(time.perf_counter()) if e.type == self.progress_type else None, session.id)
        session.add_node(node)
        started = time.perf_counter()
        self.invoker.run(session)
        wall = time.perf_counter() - started
        self.services.events.unsubscribe(token)
        row = session.results["1"][0]
        if row.state != "completed":
            raise RuntimeError(f"{node['type']} {row.state}: {row.error}")
        return row.outputs, stamps, wall

    def denoisers(self, model: str) -> dict:
        return self.services.models.load(model).unet.__dict__.get("_invoke_nodes_denoisers", {})

    def decoders(self, model: str) -> dict:
        return self.services.models.load(model).vae.__dict__.get("_invoke_nodes_decoders", {})

    def compiled_ready(self, model: str) -> bool:
        """Whether the next image runs compiled: a background build is done and did not fail."""
        built = [d for d in self.denoisers(model).values() if hasattr(d, "wait")]
        return bool(built) and all(d.wait(0) and not d.failed for d in built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, few steps (checks the script)")
    parser.add_argument("--defaults", action="store_true", help="only: default settings vs plain diffusers")
    parser.add_argument("--quick", action="store_true", help="with --defaults: leave out the new size and the attention backends")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="GIL switch interval while a compile runs (nodes/core/compiled.py's default otherwise)")
    parser.add_argument("--large", action="store_true", help="only: 1024x1024 and batch 4")
    parser.add_argument("--shape", choices=("1024", "batch4"), default=None, help="with --large: only this one")
    parser.add_argument("--sdxl", action="store_true", help="only: SDXL first and warm calls")
    parser.add_argument("--cpu", action="store_true", help="only: SD 1.5 size on the CPU")
    parser.add_argument("--worker", action="store_true",
                        help="only: the node in this process vs in the AI worker process, eager and compiled")
    parser.add_argument("--profile", action="store_true",
                        help="only: once compiled, the kernels that take most of one image's GPU time")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="app data folder (default: a new one, so the first launch compiles from nothing)")
    parser.add_argument("--probe", nargs=6, metavar=("MODELS", "DATA", "SIZE", "STEPS", "LAUNCHED", "MODE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--first-call", nargs=3, metavar=("MODELS", "WHO", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return new_process_probe(Path(args.probe[0]), Path(args.probe[1]), int(args.probe[2]), int(args.probe[3]),
                                 float(args.probe[4]), args.probe[5])
    if args.first_call:
        return sdxl_first_call(Path(args.first_call[0]), args.first_call[1], int(args.first_call[2]))
    if args.cpu:
        return cpu_cases()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --smoke for a CPU check", file=sys.stderr)
        return 2
    if args.switch_interval is not None:
        import nodes.core.compiled as compiled

        compiled.BUILD_SWITCH_INTERVAL_S = args.switch_interval
    # None: the settings' default ("auto": compiled in the background on a GPU); on the CPU ask for it by name
    mode = "default" if args.smoke else None
    steps, size, large = (3, 64, 128) if args.smoke else (30, 512, 1024)
    model = "tiny-sd1" if args.smoke else "sd15-random"
    root = Path(tempfile.mkdtemp(prefix="bench-txt2img-"))
    models = root / "models"
    data_dir = args.data_dir or root / "data"
    emit("environment", device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
         dtype="float16" if device == "cuda" else "float32", steps=steps, compile_mode=COMPILE_MODE,
         kernel_cache_from_earlier_run=(data_dir / "cache" / "torchinductor").is_dir())
    everything = not (args.defaults or args.large or args.sdxl or args.worker or args.profile)

    if args.sdxl and not args.smoke:
        sdxl_cases(root)
        return 0
    started = time.perf_counter()
    if args.smoke:
        from services.models.demo import write_tiny_sd1_diffusers

        write_tiny_sd1_diffusers(models / model)
    else:
        build_sd15(models, root / "configs", device)
    emit("build_random_model", seconds=round(time.perf_counter() - started, 1))
    if args.worker:
        worker_cases(root, models, device, data_dir, model, size, steps)
        return 0
    if args.profile:
        profile_cases(NodeRunner(root, models, device, data_dir), model, size, steps, mode)
        return 0
    if everything or args.defaults:
        default_cases(root, models, device, data_dir, model, size, steps, mode, args.quick)
    if everything or args.large:
        large_cases(NodeRunner(root, models, device, data_dir), models, model, large, size, steps, mode, args.shape)
    if everything and not args.smoke:
        sdxl_cases(root)
    return 0


def default_cases(root: Path, models: Path, device: str, data_dir: Path, model: str, size: int, steps: int,
                  mode: str | None, quick: bool = False) -> None:
    """No settings: image after image from launch until they run compiled; a new process with the
    kernels of this one; a new size; plain diffusers eager and compiled on the same weights."""
    import subprocess

    from sampler import StackSampler

    runner = NodeRunner(root, models, device, data_dir)
    launched = time.perf_counter()
    images, compiled = [], None
    while time.perf_counter() - launched < 300:
        if any(getattr(d, "failed", False) for d in runner.denoisers(model).values()):
            emit("default_compile_failed", after_s=round(time.perf_counter() - launched, 1))
            break
        ran_compiled = runner.compiled_ready(model)
        if images:
            image, stamps, wall = runner.run(model, size, steps, 1, mode)
        else:
            with StackSampler() as sampler:
                image, stamps, wall = runner.run(model, size, steps, 1, mode)
            emit("first_image_where", **sampler.report())
        images.append(image)
        emit("default_image", index=len(images), started_s=round(time.perf_counter() - wall - launched, 2), compiled=ran_compiled,
             it_per_s=rate(stamps), seconds=round(wall, 2))
        if ran_compiled:
            compiled = image
            break
    builds = [d.build_seconds for d in runner.denoisers(model).values() if hasattr(d, "build_seconds")]
    emit("default_compile", build_seconds=[round(v, 1) for b in builds for v in b.values()], ready=compiled is not None)
    warm = [runner.run(model, size, steps, 1, mode) for _ in range(2)]
    emit("default_warm", size=size, it_per_s=max(rate(s) for _, s, _ in warm), seconds=round(min(w for *_, w in warm), 2),
         psnr_vs_eager_db=psnr(warm[0][0], images[0]), repeat_identical=bool(np.array_equal(warm[0][0], warm[1][0])))
    # the VAE decode compiles after the denoiser: an eager loop beside that build is starved of the GIL
    decoders_built = all(d.wait(600) for d in runner.decoders(model).values())
    eager, stamps, _ = runner.run(model, size, steps, 1, "off")
    emit("node_eager", decoders_built_before=decoders_built, size=size, it_per_s=rate(stamps), psnr_vs_first_default_image_db=psnr(eager, images[0]))
    graphed = [runner.run(model, size, steps, 1, "graphs") for _ in range(2)]  # captured, then replayed
    emit("node_cuda_graphs", size=size, first_it_per_s=rate(graphed[0][1]), it_per_s=rate(graphed[1][1]),
         psnr_vs_eager_db=psnr(graphed[1][0], eager))
    if device == "cuda":
        decode_cases(runner, model, size)
    started = time.perf_counter()  # a new process, with the kernels this one left in the cache folder
    out = subprocess.run([sys.executable, __file__, "--probe", str(models), str(data_dir), str(size), str(steps),
                          str(time.time()), mode or "settings"], capture_output=True, text=True)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    emit("new_process", total_seconds=round(time.perf_counter() - started, 1), rows=lines,
         error=out.stderr[-2000:] if out.returncode else None)

    new_worker_case(root, models, device, data_dir, model, size, steps, mode, rate(graphed[1][1]))

    diffusers_cases(models / model, device, steps, [(size, 1, eager)])
    if quick:
        return

    other = size + size // 2  # a new size: must not stall; how long until it runs compiled
    started = time.perf_counter()
    _, stamps, wall = runner.run(model, other, steps, 1, mode)
    waited = all(d.wait(600) for d in runner.denoisers(model).values() if hasattr(d, "wait"))
    _, stamps_compiled, _ = runner.run(model, other, steps, 1, mode)
    emit("new_size", size=other, first_image_seconds=round(wall, 2), first_image_it_per_s=rate(stamps),
         compiled_after_s=round(time.perf_counter() - started, 1) if waited else None, compiled_it_per_s=rate(stamps_compiled))

    if device == "cuda":
        attention_cases()


def new_worker_case(root: Path, models: Path, device: str, data_dir: Path, model: str, size: int, steps: int,
                    mode: str | None, graphs_it_per_s: float) -> None:
    """The canvas's path: a new AI worker process with this one's caches, whose warm-up imports run while
    the user builds a graph (here a noise node, which waits for the generation imports, then a pause for
    the compiler's); then txt2img, image after image, until an image runs compiled (faster than the
    uncompiled CUDA graph by a quarter)."""
    if mode is None:  # the worker reads the setting as it starts
        os.environ.pop("INVOKE_NODES_COMPILE", None)
    else:
        os.environ["INVOKE_NODES_COMPILE"] = mode
    launched = time.perf_counter()
    runner = NodeRunner(root, models, device, data_dir, executor="worker")
    runner.run_node({"type": "noise", "seed": 1, "width": size, "height": size})
    warm_up = time.perf_counter() - launched
    time.sleep(USER_PAUSE_S)
    started = time.perf_counter()
    rates, first_image, compiled_from = [], None, None
    while compiled_from is None and time.perf_counter() - started < (120 if device == "cuda" else 10):
        at = time.perf_counter() - started
        _, stamps, wall = runner.run(model, size, steps, 1, mode)
        rates.append(rate(stamps))
        if first_image is None:
            first_image = wall
        elif rates[-1] > 1.25 * graphs_it_per_s:
            compiled_from = at
    runner.invoker.shutdown()
    emit("new_worker", warm_up_seconds=round(warm_up, 1), pause_seconds=USER_PAUSE_S, first_image_seconds=round(first_image, 2),
         compiled_from_run_s=None if compiled_from is None else round(compiled_from, 1), it_per_s=rates)


def decode_cases(runner: NodeRunner, model: str, size: int) -> None:
    """The VAE decode of one image, eager and compiled (what the node does after the last step)."""
    from nodes.core.diffusion import decode_latents

    os.environ.pop("INVOKE_NODES_COMPILE", None)  # the settings' default
    vae = runner.services.models.load(model).vae
    latents = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(4))
    mode = runner.services.models.compile_mode
    decode_latents(vae, latents, compile_mode=mode, cache_dir=runner.services.models.cache_dir)
    built = all(d.wait(600) for d in runner.decoders(model).values())

    def seconds(compile_mode: str) -> tuple[float, Any]:
        images = [decode_latents(vae, latents, compile_mode=compile_mode, cache_dir=runner.services.models.cache_dir)
                  for _ in range(3)]
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            decode_latents(vae, latents, compile_mode=compile_mode, cache_dir=runner.services.models.cache_dir)
        return (time.perf_counter() - started) / 10, np.asarray(images[-1])

    eager_s, eager = seconds("off")
    compiled_s, compiled = seconds(mode)
    full = copy.deepcopy(vae).float()  # what the node decoded SD1.5 in before (its config's force_upcast)
    full.__dict__.pop("_invoke_nodes_decoders", None)
    float32 = np.asarray(decode_latents(full, latents)[0])
    emit("vae_decode", size=size, dtype=str(vae.dtype), compiled_ready=built, eager_ms=round(eager_s * 1000, 1),
         compiled_ms=round(compiled_s * 1000, 1), psnr_vs_eager_db=psnr(compiled, eager),
         psnr_eager_vs_float32_db=psnr(eager, float32),
         build_seconds=[round(v, 1) for d in runner.decoders(model).values() for v in d.build_seconds.values()])


def new_process_probe(models: Path, data_dir: Path, size: int, steps: int, launched: float, mode: str) -> int:
    """In a new process: seconds from its launch to the first image and to the first compiled image."""
    started = time.perf_counter() - (time.time() - launched)  # the launch, on this process's clock
    from sampler import StackSampler

    mode = None if mode == "settings" else mode
    phases = {"imports": time.perf_counter() - started}
    with StackSampler() as sampler:
        root = Path(tempfile.mkdtemp(prefix="bench-probe-"))
        runner = NodeRunner(root, models, "cuda" if torch.cuda.is_available() else "cpu", data_dir)
        model = next(p.name for p in models.iterdir() if p.is_dir())
        phases["services"] = time.perf_counter() - started
        runner.services.models.load(model)
        phases["model_loaded"] = time.perf_counter() - started
        _, stamps, wall = runner.run(model, size, steps, 1, mode)
        phases["first_image"] = time.perf_counter() - started
        emit("probe_first_image", seconds_from_start=round(time.perf_counter() - started, 1), it_per_s=rate(stamps))
        all(d.wait(600) for d in runner.denoisers(model).values() if hasattr(d, "wait"))
        ready = time.perf_counter() - started
    emit("probe_phases", **{name: round(at, 2) for name, at in phases.items()}, compiled_ready=round(ready, 2))
    emit("probe_where", **sampler.report())
    _, stamps, wall = runner.run(model, size, steps, 1, mode)
    emit("probe_compiled", compiled=runner.compiled_ready(model), ready_seconds_from_start=round(ready, 1),
         seconds_from_start=round(time.perf_counter() - started, 1), it_per_s=rate(stamps),
         precompiled=[v for d in runner.denoisers(model).values() for v in getattr(d, "precompiled", {}).values()])
    return 0


def profile_cases(runner: NodeRunner, model: str, size: int, steps: int, mode: str | None, rows: int = 15) -> None:
    """The kernels that take most of one compiled image's time, to choose the next speed-up by."""
    from torch.profiler import ProfilerActivity, profile

    runner.run(model, size, steps, 1, mode)  # starts the background build
    ready = all(d.wait(900) for d in runner.denoisers(model).values() if hasattr(d, "wait"))
    runner.run(model, size, steps, 1, mode)  # captures the compiled module
    on_gpu = torch.cuda.is_available() and runner.services.models.on_gpu
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        _, stamps, wall = runner.run(model, size, steps, 1, mode)
    events = [e for e in prof.key_averages() if (e.self_device_time_total if on_gpu else e.self_cpu_time_total) > 0]
    timed = sorted(events, key=lambda e: e.self_device_time_total if on_gpu else e.self_cpu_time_total, reverse=True)
    total = sum(e.self_device_time_total if on_gpu else e.self_cpu_time_total for e in events)
    emit("profile", compiled=ready, it_per_s=rate(stamps), seconds=round(wall, 2), device_ms=round(total / 1000, 1))
    for e in timed[:rows]:
        own = e.self_device_time_total if on_gpu else e.self_cpu_time_total
        emit("profile_kernel", name=e.key[:120], calls=e.count, ms=round(own / 1000, 2), share=round(own / total, 3))


def attention_cases(size: int = 512) -> None:
    """SD 1.5's attention shapes at this size (CFG batch 2, 8 heads of 40/80/160 on the three levels with
    attention, 5 blocks each) on each SDPA backend: what a backend choice could win."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    side = size // 8
    shapes = {f"self_{side >> level}x{side >> level}": ((side >> level) ** 2, (side >> level) ** 2, 40 << level)
              for level in range(3)}
    shapes[f"cross_{side}x{side}"] = (side * side, 77, 40)
    for name, (queries, keys, width) in shapes.items():
        q = torch.randn(2, 8, queries, width, device="cuda", dtype=torch.float16)
        k = torch.randn(2, 8, keys, width, device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        row = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    for _ in range(3):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(50):
                        torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    end.record()
                    torch.cuda.synchronize()
                row[backend.name.lower()] = round(start.elapsed_time(end) / 50 * 1000, 1)
            except RuntimeError as exc:
                row[backend.name.lower()] = f"unavailable: {str(exc).splitlines()[0][:80]}"
        with torch.inference_mode():  # what the default dispatch picks
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(50):
                torch.nn.functional.scaled_dot_product_attention(q, k, v)
            end.record()
            torch.cuda.synchronize()
        emit("attention_us", size=size, shape=name, default=round(start.elapsed_time(end) / 50 * 1000, 1), **row)


def diffusers_cases(folder: Path, device: str, steps: int, shapes: list[tuple[int, int, np.ndarray | None]]) -> None:
    """Plain diffusers on its own copy of the same weights, for each (size, batch, the node's eager image or
    None): eager, then its UNet compiled (reduce-overhead), on the node's starting latents (seed 1)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from nodes.core.diffusion import make_noise

    dtype = torch.float16 if device == "cuda" else torch.float32
    plain = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, safety_checker=None).to(device)
    plain.scheduler = EulerDiscreteScheduler.from_config(plain.scheduler.config)
    plain.set_progress_bar_config(disable=True)

    def run(size: int, batch: int, n_steps: int) -> tuple[list[float], np.ndarray, float]:
        stamps: list[float] = []

        def on_step(_pipe, index, _t, kwargs):
            if device == "cuda" and index in (0, n_steps - 1):
                # the GPU's own pace: without a sync the stamps time launches queued ahead of it
                # (CUDA graphs make those nearly free); the node's first and last previews sync likewise
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return kwargs

        start = make_noise(1, (batch, 4, size // 8, size // 8)).to(device, dtype)
        started = time.perf_counter()
        images = plain(PROMPT, num_inference_steps=n_steps, guidance_scale=7.5, height=size, width=size,
                       num_images_per_prompt=batch, latents=start, callback_on_step_end=on_step).images
        return stamps, np.asarray(images[0]), time.perf_counter() - started

    for size, batch, node_image in shapes:
        run(size, batch, 3)
        stamps, image, wall = run(size, batch, steps)
        emit("diffusers_eager", size=size, batch=batch, it_per_s=rate(stamps), images_per_s=round(batch / wall, 2),
             psnr_vs_node_eager_db=None if node_image is None else psnr(image, node_image))
    plain.unet = torch.compile(plain.unet, mode="reduce-overhead" if device == "cuda" else "default")
    for size, batch, _ in shapes:
        started = time.perf_counter()
        run(size, batch, steps)
        first = time.perf_counter() - started
        warm = [run(size, batch, steps) for _ in range(2)]
        emit("diffusers_compiled", size=size, batch=batch, it_per_s=max(rate(s) for s, *_ in warm),
             images_per_s=round(batch / min(w for *_, w in warm), 2), first_call_seconds=round(first, 1))


def large_cases(runner: NodeRunner, models: Path, model: str, large: int, size: int, steps: int, mode: str | None,
                only: str | None = None) -> None:
    """1024x1024 through the node and batch 4 at 512 through the node's Generator: eager, then at the
    default settings once compiled in the background; then plain diffusers on both shapes."""
    from nodes.core.diffusion import GenerationRequest, Generator

    manager = runner.services.models
    pipe = manager.load(model)

    def batch(n_steps: int, compile_mode: str) -> tuple[None, list[float], float]:
        stamps: list[float] = []
        request = GenerationRequest(prompt=PROMPT, steps=n_steps, width=size, height=size, seed=3, batch_size=4)
        started = time.perf_counter()
        Generator(pipe, "sd1", compile_mode=compile_mode, cache_dir=manager.cache_dir).run(
            request, lambda *_: stamps.append(time.perf_counter()))
        return None, stamps, time.perf_counter() - started

    cases = {"1024": lambda n, m: runner.run(model, large, n, 1, m),
             "batch4": lambda n, m: batch(n, manager.compile_mode if m is None else m)}
    cases = {name: run for name, run in cases.items() if only in (None, name)}
    eager_images = {}
    for name, run in cases.items():
        images = 4 if name == "batch4" else 1
        run(3, "off")  # warm-up
        reset_peak()
        eager_images[name], stamps, wall = run(steps, "off")
        emit("node_eager", shape=name, it_per_s=rate(stamps), images_per_s=round(images / wall, 2), peak_gib=peak_gib())
        started = time.perf_counter()
        if mode is None:
            os.environ.pop("INVOKE_NODES_COMPILE", None)
        else:
            os.environ["INVOKE_NODES_COMPILE"] = mode
        run(3, mode)  # starts the background compiles for this shape
        all(d.wait(900) for d in runner.denoisers(model).values() if hasattr(d, "wait"))
        ready = time.perf_counter() - started
        all(d.wait(900) for d in runner.decoders(model).values())  # the VAE's build after it: not beside the timings
        reset_peak()
        image, stamps, wall = run(steps, mode)
        emit("node_default_compiled", shape=name, it_per_s=rate(stamps), images_per_s=round(images / wall, 2),
             compiled_after_s=round(ready, 1), peak_gib=peak_gib(),
             psnr_vs_eager_db=None if image is None else psnr(image, eager_images[name]))
    device = pipe.unet.device.type
    shapes = {"1024": (large, 1, eager_images.get("1024")), "batch4": (size, 4, None)}
    diffusers_cases(models / model, device, steps, [shapes[name] for name in cases])
    if device == "cuda" and "1024" in cases:
        attention_cases(large)


def sdxl_cases(root: Path) -> None:
    """SDXL 1024, 20 steps, each first call in a new process (prompt in -> PNG on disk): the node
    at default settings, uncompiled with and without cuDNN's autotuning, and plain diffusers."""
    import subprocess

    from diffusion_graph import build

    models = root / "sdxl-models"
    build(models, root / "configs", "sdxl")
    for who in ("node_default", "node_eager", "node_eager_cudnn_benchmark", "diffusers"):
        out = subprocess.run([sys.executable, __file__, "--first-call", str(models), who, "20"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith("{"):
                print(line, flush=True)
        if out.returncode:
            emit("sdxl_first_call_failed", who=who, returncode=out.returncode, error=out.stderr[-2000:])


def sdxl_first_call(models: Path, who: str, steps: int) -> int:
    """One new process: SDXL 1024 first call, then two warm calls, each from prompt to PNG on disk."""
    size = 1024
    timings = []
    if who.startswith("node"):
        if who.endswith("cudnn_benchmark"):
            import nodes.core.diffusion as diffusion

            diffusion.CUDNN_BENCHMARK = True
        root = Path(tempfile.mkdtemp(prefix="bench-sdxl-"))
        runner = NodeRunner(root, models, "cuda", root / "data")
        runner.services.models.load("sdxl-random")  # loading is not the call
        mode = "off" if who.startswith("node_eager") else None
        from sampler import StackSampler

        with StackSampler() as sampler:
            _, stamps, wall = runner.run("sdxl-random", size, steps, 1, mode)
        timings.append((wall, rate(stamps)))
        emit("sdxl_first_call_where", who=who, **sampler.report(12))
        for _ in range(2):
            _, stamps, wall = runner.run("sdxl-random", size, steps, 1, mode)
            timings.append((wall, rate(stamps)))
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(models / "sdxl-random", torch_dtype=torch.float16).to("cuda")
        pipe.set_progress_bar_config(disable=True)
        out = Path(tempfile.mkdtemp(prefix="bench-sdxl-"))
        for index in range(3):
            stamps: list[float] = []

            def on_step(_pipe, _i, _t, kwargs):
                stamps.append(time.perf_counter())
                return kwargs

            started = time.perf_counter()
            image = pipe(PROMPT, num_inference_steps=steps, height=size, width=size, callback_on_step_end=on_step,
                         generator=torch.Generator("cpu").manual_seed(1)).images[0]
            image.save(out / f"{index}.png")
            timings.append((time.perf_counter() - started, rate(stamps)))
    emit("sdxl_call", who=who, size=size, steps=steps, first_seconds=round(timings[0][0], 2),
         warm_seconds=round(min(t for t, _ in timings[1:]), 2), warm_it_per_s=max(r for _, r in timings[1:]))
    # as the AI worker quits: a compile may still run on its thread, and the interpreter's teardown
    # under it ends the process with a signal
    logging.shutdown()
    os._exit(0)


def cpu_cases() -> int:
    """SD 1.5 size on this CPU, float32, 512x512, a few steps: the node as it runs, channels_last, bfloat16."""
    root = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    models = root / "models"
    build_sd15(models, root / "configs", "cpu")
    emit("environment", device="cpu", threads=torch.get_num_threads(), torch=torch.__version__,
         cpu_capability=torch.backends.cpu.get_cpu_capability())
    runner = NodeRunner(root, models, "cpu", root / "data")
    steps, size = 3, 512
    base, stamps, wall = runner.run("sd15-random", size, steps, 1, "off")
    emit("cpu_node", size=size, steps=steps, it_per_s=rate(stamps), s_per_it=round(1 / rate(stamps), 2), seconds=round(wall, 1))
    unet = runner.services.models.load("sd15-random").unet
    for name, change, undo in (
            ("channels_last", lambda: unet.to(memory_format=torch.channels_last),
             lambda: unet.to(memory_format=torch.contiguous_format)),
            ("bfloat16", lambda: unet.to(torch.bfloat16), lambda: unet.to(torch.float32))):
        change()
        image, stamps, wall = runner.run("sd15-random", size, steps, 1, "off")
        undo()
        emit(f"cpu_node_{name}", it_per_s=rate(stamps), s_per_it=round(1 / rate(stamps), 2),
             identical=bool(np.array_equal(image, base)), psnr_vs_float32_db=psnr(image, base))
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
            _, stamps, _ = runner.run(model, size, steps, 1, mode)  # load (and start compiling in the background)
            first_rate = rate(stamps)
            while mode != "off" and time.perf_counter() - started < 300:  # until the compiled denoiser runs
                _, stamps, _ = runner.run(model, size, steps, 1, mode)
                if rate(stamps) > 1.5 * first_rate:
                    break
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


if __name__ == "__main__":
    sys.exit(main())
