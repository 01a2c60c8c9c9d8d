"""The Ray executor's throughput: the same queue of txt2img sessions on 1, 2, ... Ray workers in one
run (one local Ray): sessions per second and the ratio to one worker, the time each worker took
to load the model, and whether every image is pixel-identical to the one-worker run.  The same
for sessions whose node only waits (`bench_worker_previews`: 10 steps of 50 ms with previews),
which measures the executor's own scaling where the cores are too few or too busy to scale
txt2img (this 2-core machine).  Prints one JSON line per case.

    python bench/cluster.py            # every GPU: SD1.5-size random-weight model, 512x512, 30 steps, 16 sessions
    python bench/cluster.py --workers 1 2 --sessions 16
    python bench/cluster.py --smoke    # tiny model on the CPU (64x64, 4 steps, 8 sessions, 1 and 2 workers)

More workers than GPUs share them (two workers on one GPU: pixels must still match).
Target (issue 17): N workers give >= 0.9*N of one worker's sessions/s on batch work.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import bench_nodes  # noqa: E402,F401 - registers the waiting node (the workers import it by name)
from services.config import Settings  # noqa: E402
from services.container import RAY, Services  # noqa: E402
from services.invoker import Invoker  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"


def emit(case: str, **data) -> None:
    print(json.dumps({"case": case, **data}), flush=True)


def write_model(models: Path, smoke: bool) -> str:
    if smoke:
        from services.models.demo import write_tiny_sd1_diffusers

        write_tiny_sd1_diffusers(models / "tiny-sd1")
        return "tiny-sd1"
    import torch
    from txt2img import build_sd15

    started = time.perf_counter()
    build_sd15(models, models.parent / "cache", "cuda")
    torch.cuda.empty_cache()  # the workers load it again; this process keeps none of it
    emit("build_model", seconds=round(time.perf_counter() - started, 1))
    return "sd15-random"


def graph(model: str, seed: int, size: int, steps: int) -> dict:
    return {"nodes": [{"id": "gen", "type": "txt2img", "model": model, "prompt": PROMPT, "steps": steps,
                       "width": size, "height": size, "seed": seed}]}


WAITING = {"nodes": [{"id": "gen", "type": "bench_worker_previews", "steps": 10, "step_s": 0.05}]}


def wait_until_warm(invoker: Invoker) -> list[dict]:
    """The workers import torch and diffusers when they start; time only what comes after."""
    while True:
        workers = invoker.cluster()["workers"]
        if all(w.get("warm") for w in workers):
            return workers
        time.sleep(0.2)


def run_queue(invoker: Invoker, graphs: list[dict]) -> tuple[float, list]:
    """Queue every session at once; the wall time until the last one finished, and the sessions."""
    sessions = [invoker.create_session(g) for g in graphs]
    started = time.perf_counter()
    for session in sessions:
        invoker.invoke(session)
    for session in sessions:
        invoker.wait(session.id)
    seconds = time.perf_counter() - started
    for session in sessions:
        row = session.results["gen"][0]
        if row.state != "completed":
            raise SystemExit(f"session failed: {row.error}")
    return seconds, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1 and every GPU; smoke: 1 2)")
    parser.add_argument("--sessions", type=int, help="sessions in the queue (default 16; smoke 8)")
    parser.add_argument("--size", type=int, help="image size (default 512; smoke 64)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 30; smoke 4)")
    args = parser.parse_args()
    import ray

    sessions = args.sessions or (8 if args.smoke else 16)
    size = args.size or (64 if args.smoke else 512)
    steps = args.steps or (4 if args.smoke else 30)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        root = Path(folder)
        model = write_model(root / "models", args.smoke)
        # One Ray for every case; each case starts its own workers on it.
        cpus = os.cpu_count() or 1
        ray.init(address="local", num_cpus=max(cpus, *(args.workers or [2])), num_gpus=0 if args.smoke else None,
                 include_dashboard=False, object_store_memory=512 * 2**20, logging_level=logging.WARNING)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        counts = args.workers or ([1, 2] if args.smoke else sorted({1, max(gpus, 1)}))
        emit("setup", model=model, size=size, steps=steps, sessions=sessions, gpus=gpus, cpus=cpus, workers=counts,
             ray=ray.__version__)
        reference: list[np.ndarray] | None = None
        base_rate = base_wait = None
        for count in counts:
            settings = Settings(data_dir=root / f"w{count}", config_dir=root / f"w{count}" / "config",
                                models_dir=root / "models", outputs_dir=root / f"w{count}" / "outputs",
                                sessions_dir=root / f"w{count}" / "sessions", plugins_dir=root / "plugins",
                                device="cpu" if args.smoke else "auto", cluster=f"local:{count}")
            started = time.perf_counter()
            invoker = Invoker(Services.local(settings, executor=RAY))
            start_s = time.perf_counter() - started
            try:
                wait_until_warm(invoker)
                warm_s = time.perf_counter() - started
                # One session per worker first: each loads the model (nothing is loaded, so each goes to a different worker).
                run_queue(invoker, [graph(model, 10_000 + i, size, steps) for i in range(count)])
                workers = invoker.cluster()["workers"]
                assert all(w["models"] == [model] for w in workers), workers
                seconds, done = run_queue(invoker, [graph(model, seed, size, steps) for seed in range(sessions)])
                images = [np.asarray(invoker.images.get(s.results["gen"][0].outputs["image"]["image_name"])) for s in done]
                if reference is None:
                    reference = images
                rate = sessions / seconds
                base_rate = base_rate or rate
                emit("cluster_txt2img", workers=count, devices=[w["device"] for w in workers], sessions=sessions,
                     seconds=round(seconds, 3), sessions_per_s=round(rate, 3),
                     speedup_vs_1_worker=round(rate / base_rate, 3), target_speedup=round(0.9 * count, 2),
                     median_session_s=round(statistics.median(s.results["gen"][0].seconds for s in done), 3),
                     workers_start_s=round(start_s, 2), workers_warm_s=round(warm_s, 2),
                     model_load_per_worker_s=[round(w["load_s"][model], 3) for w in workers],
                     pixels_equal_to_first_case=all(np.array_equal(a, b) for a, b in zip(images, reference)))
                seconds, _ = run_queue(invoker, [WAITING] * sessions)
                wait_rate = sessions / seconds
                base_wait = base_wait or wait_rate
                emit("cluster_waiting_node", workers=count, sessions=sessions, seconds=round(seconds, 3),
                     sessions_per_s=round(wait_rate, 3), speedup_vs_1_worker=round(wait_rate / base_wait, 3),
                     target_speedup=round(0.9 * count, 2), ideal_session_s=0.5)
            finally:
                invoker.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
