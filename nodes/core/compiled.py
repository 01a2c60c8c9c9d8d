"""How the denoiser runs on a GPU: as a CUDA graph at once, compiled in the background.

`CudaGraphs` captures a module as a CUDA graph per input structure: a step is one launch instead of
~1,000 kernel launches from Python, with the same kernels (the same pixels), and the loop no longer
starves for the GIL while a compile holds it.  `BackgroundCompiled` runs that graph of the eager
denoiser for the first image at a new input shape while a background thread compiles the denoiser
for that shape; later images use the compiled module, captured as a CUDA graph the same way.
Compiled artifacts are saved in the cache folder after each build and loaded by the next process.
A failed compile or capture (no triton, no C compiler, an unsupported model) is logged once and the
denoiser runs without it: speed is an optimisation, never a reason for a generation to fail.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from services.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

# One compile at a time: each holds the GIL for long stretches and slows the eager loop beside it.
_BUILD_LOCK = threading.Lock()
# CUDA forbids a device-wide sync while any stream captures a graph, and the capture then fails too.
# A build's first call syncs the device (inductor times its kernels' configurations): a capture holds
# this lock, a build's GPU work holds it too, and a capture that finds it held waits for a later call.
_CAPTURE_LOCK = threading.Lock()
_ARTIFACTS_LOADED: set[Path] = set()
ARTIFACTS_FILE = "compiled-artifacts.bin"
# Sizes compiled per denoiser before dynamo gives up and runs eager (its default is 8).
RECOMPILE_LIMIT = 64
# While a build runs, how long a thread waits for the GIL before the holder must hand it over
# (Python's default is 5 ms).  The loop gives the GIL up in every torch op and waits to get it back:
# at 5 ms an eager step of ~1,000 ops took 1.7 s (0.59 it/s on an H200) beside a compile; a CUDA-graph
# step still has the scheduler's few dozen.
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


@contextlib.contextmanager
def _short_gil_turns() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(BUILD_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def import_compiler() -> None:
    """Import inductor as a build would, holding the build lock with short GIL turns.  Its lowerings,
    kernel templates and custom ops register on import: imported ahead, a new AI worker's first run ran
    compiled 5.8-6.4 s after it began instead of 11.4-12.2 s (H200) when the build imported them."""
    with _BUILD_LOCK, _short_gil_turns():
        import torch._inductor.compile_fx  # noqa: F401


@contextlib.contextmanager
def _apart_from_captures(inputs: tuple[Any, ...]) -> Iterator[None]:
    """A build's GPU work: never beside a capture, and finished before a capture may start (waited for
    on this thread's stream: a device-wide sync would break a capture that another build's lock let in)."""
    device = next((x.device for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)), None)
    with _CAPTURE_LOCK:
        yield
        if device is not None and device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
            done.synchronize()


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


# torch.compile modes that run as CUDA graphs: (captured by CudaGraphs, the mode inductor compiles with).
GRAPHED_MODES = {"reduce-overhead": (True, "default"), "max-autotune": (True, "max-autotune-no-cudagraphs")}
# Graphs kept per module: each holds its activations' memory while it lives.
GRAPHS_KEPT = 2
# Eager calls before a capture: cuDNN times its algorithms and lazy state is made outside the graph.
WARMUP_CALLS = 2


def _weight_addresses(module: torch.nn.Module) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in (*module.parameters(), *module.buffers()))


class GraphedCall:
    """One CUDA graph of `module(*inputs)` for one input structure.  A call copies its tensors into the
    graph's own input buffers, replays, and returns a copy of the output (the graph overwrites it next
    time).  Weights are read where they were at capture: `valid_for` tells when they moved."""

    def __init__(self, module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        leaves, self._spec = tree_flatten(inputs)
        self._slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        self._buffers = [leaves[i].clone() for i in self._slots]
        for i, buffer in zip(self._slots, self._buffers):
            leaves[i] = buffer
        args = tree_unflatten(leaves, self._spec)
        self.weights = _weight_addresses(module)
        device = self._buffers[0].device
        side, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                module(*args)
        current.wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        # thread_local: a compile on another thread may use the GPU meanwhile
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._output = module(*args)

    def valid_for(self, module: torch.nn.Module) -> bool:
        return _weight_addresses(module) == self.weights

    def __call__(self, *inputs: Any) -> Any:
        leaves = tree_flatten(inputs)[0]
        for i, buffer in zip(self._slots, self._buffers):
            buffer.copy_(leaves[i])
        self._graph.replay()
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, self._output)


class CudaGraphs:
    """The eager module, run as a CUDA graph per input structure on a GPU (captured on the first pick
    for it, recaptured when the weights moved, e.g. after the model was offloaded and brought back).
    Anything that cannot be captured is logged once and runs eager."""

    def __init__(self, eager: torch.nn.Module) -> None:
        self.eager = eager
        self._graphs: collections.OrderedDict[Any, GraphedCall] = collections.OrderedDict()
        self._failed = False

    def pick(self, *inputs: Any) -> Callable[..., Any]:
        """The graph for these inputs, captured now if need be; the eager module where that cannot be
        done (not a GPU, a failed capture) or not now (a build is using the GPU: captured on a later call)."""
        device = next((x.device for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)), None)
        if self._failed or device is None or device.type != "cuda":
            return self.eager
        key = _signature(inputs)
        graph = self.captured(*inputs)
        if graph is None:
            self._graphs.pop(key, None)
            if not _CAPTURE_LOCK.acquire(blocking=False):
                return self.eager
            try:
                graph = GraphedCall(self.eager, inputs)
            except Exception:
                log.warning("capturing %s as a CUDA graph failed; it runs without one", type(self.eager).__name__,
                            exc_info=True)
                self._failed = True
                self._graphs.clear()
                return self.eager
            finally:
                _CAPTURE_LOCK.release()
            self._graphs[key] = graph
            while len(self._graphs) > GRAPHS_KEPT:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        return graph

    def captured(self, *inputs: Any) -> GraphedCall | None:
        """The graph already captured for these inputs, if its weights are still where they were."""
        graph = self._graphs.get(_signature(inputs))
        return graph if graph is not None and graph.valid_for(self.eager) else None

    @property
    def failed(self) -> bool:
        return self._failed

    def forget(self, *inputs: Any) -> None:
        """Drop the graph for these inputs (its memory), e.g. once a compiled module serves them."""
        self._graphs.pop(_signature(inputs), None)


# Compiled functions kept in the cache folder, one per model architecture and input shape (about
# 50 MiB each for SD1.5's denoiser); past this many, the least recently used go.
PRECOMPILED_DIR = "precompiled"
PRECOMPILED_KEPT = 24


def _plain_inputs(inputs: tuple[Any, ...]) -> bool:
    """Only tensors and None: what a precompiled function is built for (ControlNet residual lists and
    IP-Adapter tokens come with patched attention whose settings a saved function would not check)."""
    return all(x is None or isinstance(x, torch.Tensor) for x in inputs)


def _guard_failed(error: Exception) -> bool:
    return isinstance(error, RuntimeError) and "GuardManager check failed" in str(error)


class CompiledShapes(torch.nn.Module):
    """What the builds made: per input signature, the function that runs the module compiled (a
    precompiled function, or torch.compile's module)."""

    def __init__(self, eager: torch.nn.Module) -> None:
        super().__init__()
        self.eager = eager
        self.by_signature: dict[Any, Callable[..., Any]] = {}

    def forward(self, *inputs: Any) -> Any:
        key = _signature(inputs)
        try:
            return self.by_signature[key](*inputs)
        except RuntimeError as error:
            if not _guard_failed(error):
                raise
        # a saved function checks its inputs' and weights' layout first: when they changed, run eager
        log.warning("the compiled %s no longer fits its weights; it runs uncompiled", type(self.eager).__name__)
        self.by_signature[key] = self.eager
        return self.eager(*inputs)


class BackgroundCompiled:
    """A denoiser and its compiled twin; `pick` says which one to run for the given inputs."""

    def __init__(self, eager: torch.nn.Module, mode: str, cache_dir: Path | None, backend: str = "inductor",
                 graphs_meanwhile: bool = True) -> None:
        _fx_patches_stay_in_their_thread()
        self.eager = eager
        self.mode, self.backend, self.cache_dir = mode, backend, cache_dir
        graphed, self.inductor_mode = GRAPHED_MODES.get(mode, (False, mode))
        # what runs while a build is under way: the eager module, as a CUDA graph on a GPU unless told not to
        self.graphs = CudaGraphs(eager) if graphs_meanwhile else None
        self.compiled = CompiledShapes(eager)
        self.compiled_graphs = CudaGraphs(self.compiled) if graphed else None
        self._torch_compiled: Callable[..., Any] | None = None  # made on the build thread: importing torch's compiler takes seconds
        self._configured = False
        self._states: dict[tuple[Any, ...], str] = {}  # signature -> "building" | "ready"
        self._failed = False
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.build_seconds: dict[tuple[Any, ...], float] = {}
        self.precompiled: dict[tuple[Any, ...], str] = {}  # signature -> "loaded" | "saved"

    def __reduce__(self) -> tuple[Any, ...]:
        # A model keeps its compiled twins in its attributes, and saving a precompiled function pickles
        # the model's attributes with the function's guards (which are dropped): nothing of this is needed.
        return type(None), ()

    def _configure(self) -> None:
        import torch._dynamo.config as dynamo_config
        import torch._inductor.config as inductor_config
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        inductor_config.conv_1x1_as_mm = True  # SD's 1x1 convolutions run faster as matrix products
        if self.cache_dir is not None:
            # kernels in the app's cache folder (kept across reboots), unless the user chose a folder;
            # torch writes its /tmp default into the variable on first use, so that one is replaced
            if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.cache_dir / "torchinductor")
            load_artifacts(self.cache_dir)
        self._configured = True

    def _compiled_for(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> Callable[..., Any]:
        """The function that runs these inputs compiled, called once (compiles, or loads, and warms up)."""
        run = self._precompiled(key, inputs)
        if run is not None:
            return run
        if self._torch_compiled is None:
            # The CUDA-graph modes are compiled without torch's own graphs (its graph trees keep per-thread
            # state, and the build runs on another thread than the loop): CudaGraphs captures the compiled
            # module in the loop's thread instead, as it does the eager one.
            options = {"mode": self.inductor_mode} if self.backend == "inductor" else {}  # other backends: tests without a C compiler
            self._torch_compiled = torch.compile(self.eager, backend=self.backend, fullgraph=False, dynamic=False, **options)
        with _apart_from_captures(inputs):  # compiles in this first call too: captures wait that long
            self._torch_compiled(*inputs)
        return self._torch_compiled

    def _precompiled(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> Callable[..., Any] | None:
        """The compiled function for these inputs from the cache folder, or compiled ahead of time and
        saved there: a new process loads it in about a second instead of tracing the model again.  None
        where that cannot be done (no cache folder, a torch without it, a graph break, inputs that are
        not plain tensors): the build compiles the usual way."""
        if self.backend != "inductor" or self.cache_dir is None or not _plain_inputs(inputs) \
                or not hasattr(torch.compiler, "load_compiled_function"):
            return None
        path = self._precompiled_path(key, inputs)
        if path.is_file():
            try:
                with path.open("rb") as file:  # written by this app into its own cache folder
                    function = torch.compiler.load_compiled_function(file)
                with _apart_from_captures(inputs):
                    function(self.eager, *inputs)
            except Exception:
                log.warning("the compiled function in %s did not load; compiling afresh", path, exc_info=True)
            else:
                os.utime(path)  # recently used: kept longest
                self.precompiled[key] = "loaded"
                return functools.partial(function, self.eager)
        try:
            import torch._dynamo.config as dynamo_config

            dynamo_config.enable_aot_compile = True  # off by default in torch 2.11
            # guards on tensors (inputs' and weights' shapes, dtypes, layout) only: the others name
            # this process's objects; the file's name holds what else the function is built for
            keep = functools.partial(torch.compiler.keep_tensor_guards_unsafe, keep_parameters=True)
            options = {**torch._inductor.list_mode_options(self.inductor_mode), "guard_filter_fn": keep}
            function = torch.compile(self.eager, fullgraph=True, dynamic=False, options=options).forward.aot_compile((inputs, {}))
            with _apart_from_captures(inputs):
                function(self.eager, *inputs)
        except Exception:
            log.info("compiling %s ahead of time failed; compiling it the usual way", type(self.eager).__name__,
                     exc_info=True)
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            unfinished = path.with_suffix(".part")
            function.save_compiled_function(str(unfinished))
            os.replace(unfinished, path)  # a crash mid-write leaves no half file under the real name
            self.precompiled[key] = "saved"
            _prune(path.parent, PRECOMPILED_KEPT)
        except Exception:
            log.warning("saving the compiled function to %s failed", path, exc_info=True)
        return functools.partial(function, self.eager)

    def _precompiled_path(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> Path:
        """The file of the function compiled for this module (its code, structure and weights' layout),
        these inputs, this mode, torch and GPU."""
        import inspect

        weights = [(tuple(t.shape), t.stride(), t.dtype, t.device.type) for t in (*self.eager.parameters(), *self.eager.buffers())]
        processors = sorted({type(m.processor).__name__ for m in self.eager.modules() if hasattr(m, "processor")})
        device = next(x.device for x in inputs if isinstance(x, torch.Tensor))
        gpu = (torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
        try:
            import diffusers

            versions = (torch.__version__, torch.version.cuda, diffusers.__version__)
        except ImportError:
            versions = (torch.__version__, torch.version.cuda, None)
        try:
            source = inspect.getsource(type(self.eager))
        except (OSError, TypeError):  # a class made at run time: its name and structure stand for it
            source = type(self.eager).__qualname__
        identity = repr((versions, gpu, self.mode, key, repr(self.eager), weights, processors, source)).encode()
        return self.cache_dir / PRECOMPILED_DIR / f"{type(self.eager).__name__}-{hashlib.sha256(identity).hexdigest()[:24]}.bin"

    def pick(self, *inputs: Any) -> Callable[..., Any]:
        """The compiled module when it is built for inputs of these shapes; else the eager one (as a
        CUDA graph on a GPU), and the build for these shapes starts in the background."""
        if self._failed:
            return self._meanwhile(inputs)
        key = _signature(inputs)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                self._states[key] = "building"
        if state == "ready":
            run = self.compiled if self.compiled_graphs is None else self.compiled_graphs.pick(*inputs)
            if run is self.compiled and self.compiled_graphs is not None and not self.compiled_graphs.failed \
                    and self.graphs is not None and (eager_graph := self.graphs.captured(*inputs)) is not None:
                return eager_graph  # another build is using the GPU: this graph until the compiled one is captured
            if self.graphs is not None:
                self.graphs.forget(*inputs)
            return run
        meanwhile = self._meanwhile(inputs)  # captured before the build starts to use the GPU
        if state is None:
            threading.Thread(target=self._build, args=(key, _copy(inputs)), name="compile-denoiser", daemon=True).start()
        return meanwhile

    def _meanwhile(self, inputs: tuple[Any, ...]) -> Callable[..., Any]:
        return self.eager if self.graphs is None else self.graphs.pick(*inputs)

    def _build(self, key: tuple[Any, ...], inputs: tuple[Any, ...]) -> None:
        started = time.perf_counter()
        try:
            with _BUILD_LOCK, torch.inference_mode(), _short_gil_turns():
                if not self._configured:
                    self._configure()
                self.compiled.by_signature[key] = self._compiled_for(key, inputs)
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


def _prune(folder: Path, kept: int) -> None:
    files = sorted(folder.glob("*.bin"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in files[kept:]:
        old.unlink(missing_ok=True)
