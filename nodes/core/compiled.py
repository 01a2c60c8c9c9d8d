"""torch.compile of the denoiser without a wait: eager until the compiled module is ready.

The first image at a new input shape runs eager while a background thread compiles the denoiser
for that shape (`BackgroundCompiled.pick`); later images use the compiled module.  Compiled
artifacts are saved in the cache folder after each build and loaded by the next process, so a
new process reaches compiled speed without compiling again.  A failed compile (no triton, no C
compiler, an unsupported model) is logged once and the denoiser stays eager: compiling is an
optimisation, never a reason for a generation to fail.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from services.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

# One compile at a time: each holds the GIL for long stretches and slows the eager loop beside it.
_BUILD_LOCK = threading.Lock()
_ARTIFACTS_LOADED: set[Path] = set()
ARTIFACTS_FILE = "compiled-artifacts.bin"
# Sizes compiled per denoiser before dynamo gives up and runs eager (its default is 8).
RECOMPILE_LIMIT = 64
# While a build runs, how long a thread waits for the GIL before the holder must hand it over
# (Python's default is 5 ms).  The eager loop gives the GIL up in every torch op and waits to get it
# back: at 5 ms a step of ~1,000 ops took 1.7 s (0.59 it/s on an H200) beside a compile.
BUILD_SWITCH_INTERVAL_S = 1e-5


def _fx_patches_stay_in_their_thread() -> None:
    """While torch.fx traces (compiling does), it swaps nn.Module.__call__ and __getattr__ for
    tracing versions process-wide, so a model called eagerly on another thread meanwhile goes
    through the tracer and fails ("module is not installed as a submodule").  Here the swapped-in
    methods act only in the thread that traces; other threads get the methods they had."""
    from torch.fx._symbolic_trace import _Patcher

    if getattr(_Patcher.patch_method, "_invoke_nodes_thread_local", False):
        return
    patch_method = _Patcher.patch_method

    def thread_local_patch_method(self: Any, cls: type, name: str, new_fn: Any, deduplicate: bool = True) -> None:
        previous, owner = getattr(cls, name), threading.get_ident()

        @functools.wraps(new_fn)
        def in_owner_thread(*args: Any, **kwargs: Any) -> Any:
            return (new_fn if threading.get_ident() == owner else previous)(*args, **kwargs)

        patch_method(self, cls, name, in_owner_thread, deduplicate)

    thread_local_patch_method._invoke_nodes_thread_local = True  # type: ignore[attr-defined]
    _Patcher.patch_method = thread_local_patch_method  # type: ignore[method-assign]


def _cudagraph_thread_state() -> None:
    """CUDA-graph trees keep per-thread state that torch before 2.12 sets up only in the thread that
    imported it (its lookup asserts elsewhere): set it up in this thread too (the build thread and
    the node's thread both reach it)."""
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:
        return
    if hasattr(trees.local, "tree_manager_containers") or torch._C._is_key_in_tls("tree_manager_containers"):
        return
    trees.local.tree_manager_containers = {}
    trees.local.tree_manager_locks = collections.defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", trees.local.tree_manager_locks)


@contextlib.contextmanager
def _short_gil_turns() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(BUILD_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _signature(inputs: Any) -> Any:
    """What a compiled module is built for: tensor shapes, and the other values, inside lists and dicts too
    (ControlNet residuals, IP-Adapter tokens)."""
    if isinstance(inputs, torch.Tensor):
        return tuple(inputs.shape), inputs.dtype, inputs.device
    if isinstance(inputs, (list, tuple)):
        return tuple(_signature(x) for x in inputs)
    if isinstance(inputs, dict):
        return tuple((k, _signature(v)) for k, v in inputs.items())
    return inputs


def _copy(inputs: Any) -> Any:
    """The inputs for the background build, tensors cloned (the loop's may be reused or overwritten)."""
    if isinstance(inputs, torch.Tensor):
        return inputs.clone()
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_copy(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: _copy(v) for k, v in inputs.items()}
    return inputs


def load_artifacts(cache_dir: Path) -> None:
    """Fill torch's compile caches from the file an earlier process saved (once per process)."""
    path = cache_dir / ARTIFACTS_FILE
    if path in _ARTIFACTS_LOADED:
        return
    _ARTIFACTS_LOADED.add(path)
    if not path.is_file():
        return
    try:
        loaded = torch.compiler.load_cache_artifacts(path.read_bytes()) is not None
    except Exception:
        loaded = False
    if not loaded:  # a damaged file or one from another torch: compile afresh, the next save replaces it
        log.warning("compiled artifacts in %s were not loaded; compiling afresh", path)


def save_artifacts(cache_dir: Path) -> None:
    saved = torch.compiler.save_cache_artifacts()
    if saved is not None:
        atomic_write_bytes(cache_dir / ARTIFACTS_FILE, saved[0])


class BackgroundCompiled:
    """A denoiser and its compiled twin; `pick` says which one to run for the given inputs."""

    def __init__(self, eager: torch.nn.Module, mode: str, cache_dir: Path | None, backend: str = "inductor") -> None:
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        _fx_patches_stay_in_their_thread()
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        inductor_config.conv_1x1_as_mm = True  # SD's 1x1 convolutions run faster as matrix products
        if cache_dir is not None:
            # kernels in the app's cache folder (kept across reboots), unless the user chose a folder;
            # torch writes its /tmp default into the variable on first use, so that one is replaced
            if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "torchinductor")
            load_artifacts(cache_dir)
        self.eager = eager
        options = {"mode": mode} if backend == "inductor" else {}  # other backends: tests on a CPU without a C compiler
        self.compiled = torch.compile(eager, backend=backend, fullgraph=False, dynamic=False, **options)
        self.cache_dir = cache_dir
        self._states: dict[tuple[Any, ...], str] = {}  # signature -> "building" | "ready"
        self._failed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.build_seconds: dict[tuple[Any, ...], float] = {}

    def pick(self, *inputs: Any) -> torch.nn.Module:
        """The compiled module when it is built for inputs of these shapes; else the eager one (and
        the build for these shapes starts in the background)."""
        if self._failed:
            return self.eager
        key = _signature(inputs)
        with self._lock:
            state = self._states.get(key)
            if state == "ready":
                _cudagraph_thread_state()
                return self.compiled
            if state is None:
                self._states[key] = "building"
                copies = _copy(inputs)
                threading.Thread(target=self._build, args=(key, copies), name="compile-denoiser", daemon=True).start()
        return self.eager

    def _build(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> None:
        started = time.perf_counter()
        try:
            _cudagraph_thread_state()
            with _BUILD_LOCK, torch.inference_mode(), _short_gil_turns():
                self.compiled(*inputs)  # compiles (or loads from the caches) and warms up
                if inputs[0].device.type == "cuda":
                    torch.cuda.synchronize(inputs[0].device)
                if self.cache_dir is not None:
                    save_artifacts(self.cache_dir)
        except Exception:
            log.warning("compiling the denoiser failed; it stays uncompiled (set compile to off to skip trying)",
                        exc_info=True)
            state = "failed"
        else:
            state = "ready"
        with self._lock:
            if state == "failed":
                self._failed = True
                self._states.pop(key, None)
            else:
                self._states[key] = state
                self.build_seconds[key] = time.perf_counter() - started
            self._idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the builds under way (benchmarks, tests); False if some still run after `timeout`."""
        with self._lock:
            return self._idle.wait_for(lambda: "building" not in self._states.values(), timeout)

    @property
    def failed(self) -> bool:
        return self._failed
