"""The model manager: finds the user's model files, gives each a stable id, loads them with an
LRU cache in RAM and on the GPU.

Importing this module does not import torch: scanning reads safetensors headers and JSON
configs only (a .ckpt/.pth is read with torch, lazily); loading code lives in loading.py beside
it and is imported when a model is loaded.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import stat
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from services.config import Settings
from services.models.adapters import EMBEDDINGS_FOLDER
from services.models.preprocessor_files import PREPROCESSORS_FOLDER

log = logging.getLogger(__name__)

MODEL_KINDS = ("main", "vae", "lora", "embedding", "upscaler", "face_restore", "controlnet", "t2i_adapter", "ip_adapter",
               "clip_vision", "preprocessor")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")
SIDECAR_SUFFIX = ".config"  # "<file stem>.config/": a diffusers config folder for a non-standard single file
# Files that sit beside models and are not models themselves: never reported.
_IGNORED_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".txt", ".md", ".png", ".jpg", ".jpeg", ".webp", ".html"})
_COMPILE_MODES = ("auto", "off", "graphs", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default")
AUTO_COMPILE_MODE = "reduce-overhead"  # what "auto" compiles with on a CUDA GPU (the fastest measured)
GB = 1024**3


class ModelNotFoundError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not found"


class ModelLoadError(ValueError):
    """A listed model whose file could not be loaded; the message names it and says why (the
    traceback goes to the log)."""

    def __init__(self, model_id: str, message: str) -> None:
        super().__init__(message)
        self.model_id = model_id


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    kind: str  # one of MODEL_KINDS
    base: str | None  # sd1 | sd2 | sdxl for main models; None where it does not apply
    format: str  # diffusers | safetensors | ckpt | pth
    path: str
    size_bytes: int
    variant: str = "normal"  # "inpaint" for 9-channel inpainting UNets, "refiner" for SDXL refiners; IP-Adapters: "plus", "full"
    architecture: str | None = None  # for upscalers / face restorers, as spandrel names it
    config_path: str | None = None  # diffusers config folder used for a single file (sidecar), if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UnrecognizedFile:
    path: str
    reason: str


class ModelManager(ABC):
    """What nodes and apps need from a model manager."""

    @abstractmethod
    def list(self, kind: str | None = None) -> list[ModelInfo]: ...

    @abstractmethod
    def get(self, model_id: str, kind: str | None = None) -> ModelInfo:
        """Raises ModelNotFoundError (naming the known ids) for an unknown id or one of another kind."""

    @abstractmethod
    def load(self, model_id: str) -> Any:
        """The loaded model, on the execution device."""

    @abstractmethod
    def unrecognized(self) -> list[UnrecognizedFile]: ...

    @abstractmethod
    def rescan(self) -> None: ...

    @property
    @abstractmethod
    def compile_mode(self) -> str:
        """How denoisers run: off | graphs (CUDA graphs, uncompiled) | reduce-overhead | max-autotune |
        max-autotune-no-cudagraphs | default (torch.compile modes, built in the background)."""

    @property
    @abstractmethod
    def cache_dir(self) -> Path:
        """Where compiled kernels and converted weights are kept."""

    @abstractmethod
    def face_detector(self, name: str) -> Any:
        """A loaded face detector (`detect(image)` -> faces) by the name face_restore's `detector` field
        gives ("auto": RetinaFace when its weights are in the models folder, else the shipped BlazeFace).
        Raises ModelNotFoundError saying where its weights go when they are missing, ValueError when
        the file is not such a detector."""

    @contextlib.contextmanager
    def use(self, *model_ids: str) -> Iterator[list[Any]]:
        """Load several models and keep them loaded (not evicted) while the block runs."""
        yield [self.load(model_id) for model_id in model_ids]


# --------------------------------------------------------------------------------------------
# Scanning


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class _Found:
    """A recognised model before it gets its id."""

    root: Path
    path: Path
    kind: str
    base: str | None
    format: str
    size_bytes: int
    variant: str = "normal"
    architecture: str | None = None
    config_path: Path | None = None


def _read_json(path: Path) -> dict[str, Any]:
    """A config file of a model folder (a FIFO or a hostile nesting is refused, not read)."""
    from nodes.core.untrusted import UntrustedInputError, load_json, regular_file

    try:
        data = load_json(regular_file(path).read_bytes(), max_bytes=16 * 1024 * 1024)
    except UntrustedInputError as exc:
        raise ValueError(f"{path.name}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: not a JSON object")
    return data


def _probe_diffusers_folder(folder: Path) -> _Found:
    index = _read_json(folder / "model_index.json")
    unet_config = _read_json(folder / "unet" / "config.json")
    pipeline = str(index.get("_class_name", ""))
    context_dim = unet_config.get("cross_attention_dim")
    from services.models.checkpoints import BASE_BY_CONTEXT_DIM  # torch-free

    if "XL" in pipeline:
        base = "sdxl"
    elif context_dim in BASE_BY_CONTEXT_DIM:
        base = BASE_BY_CONTEXT_DIM[context_dim]
    else:  # a small custom model: SD 1.x uses OpenAI CLIP (quick_gelu), SD 2.x OpenCLIP (gelu)
        text_config = _read_json(folder / "text_encoder" / "config.json")
        base = "sd1" if text_config.get("hidden_act") == "quick_gelu" else "sd2"
    variant = "inpaint" if unet_config.get("in_channels") == 9 else "normal"
    if base == "sdxl" and not (index.get("text_encoder") or [None])[0]:
        variant = "refiner"  # only the second (OpenCLIP) text encoder; aesthetic-score conditioning
    return _Found(folder.parent, folder, "main", base, "diffusers", _dir_size(folder), variant)


def _probe_file(path: Path) -> _Found:
    from services.models.checkpoints import classify_sd_checkpoint, read_shapes

    fmt = "safetensors" if path.suffix.lower() == ".safetensors" else ("ckpt" if path.suffix.lower() == ".ckpt" else "pth")
    shapes = read_shapes(path)
    from services.models.adapters import is_lora, lora_base
    from services.models.control_files import classify_control_file

    control = classify_control_file(shapes)
    if control is not None:
        sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
        return _Found(path.parent, path, control[0], control[1], fmt, path.stat().st_size, control[2],
                      config_path=sidecar if (sidecar / "config.json").is_file() else None)
    if is_lora(shapes):
        return _Found(path.parent, path, "lora", lora_base(shapes), fmt, path.stat().st_size)
    info = classify_sd_checkpoint(shapes)
    size = path.stat().st_size
    if info is not None:
        sidecar = path.with_name(path.stem + SIDECAR_SUFFIX)
        return _Found(path.parent, path, info.kind, info.base, fmt, size, info.variant,
                      config_path=sidecar if sidecar.is_dir() else None)
    try:
        from services.models.restoration_files import probe_restoration_file
    except ImportError as exc:
        raise ValueError(f"not a Stable Diffusion checkpoint or VAE, and restoration models cannot be read here ({exc})") from None
    try:
        kind, architecture = probe_restoration_file(path)
    except ValueError as exc:
        raise ValueError(f"not a Stable Diffusion checkpoint or VAE, nor an upscaler/face restorer: {exc}") from None
    return _Found(path.parent, path, kind, None, fmt, size, architecture=architecture)


class _ProbeCache:
    """Probe results keyed by (path, mtime, size), so a rescan only reads new or changed files.
    Kept on disk too: a new process answers its first listing without probing (a .ckpt probe
    imports torch, seconds on its own)."""

    def __init__(self, file: Path | None = None) -> None:
        self._file = file
        self._results: dict[Path, tuple[tuple[int, int], _Found | str]] = self._read() if file else {}
        self._changed = False

    def probe(self, path: Path, stamp_path: Path, probe: Any) -> _Found | str:
        try:
            info = stamp_path.stat()
        except OSError as exc:  # removed or made unreadable since the walk
            return f"cannot be read ({exc.strerror or exc})"
        stamp = (info.st_mtime_ns, info.st_size)
        cached = self._results.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            result: _Found | str = probe(path)
        except Exception as exc:  # every failure becomes the reason shown to the user
            result = _reason(exc)
        self._results[path] = (stamp, result)
        self._changed = True
        return result

    def save(self) -> None:
        if self._file is None or not self._changed:
            return
        from services.fsutil import atomic_write_text

        rows = [[str(path), list(stamp), result if isinstance(result, str) else _found_to_json(result)]
                for path, (stamp, result) in self._results.items()]
        try:
            atomic_write_text(self._file, json.dumps({"version": _SCAN_CACHE_VERSION, "rows": rows}))
            self._changed = False
        except OSError as exc:
            log.warning("cannot write the model scan cache %s: %s", self._file, exc)

    def _read(self) -> dict[Path, tuple[tuple[int, int], _Found | str]]:
        from nodes.core.untrusted import UntrustedInputError, load_json, regular_file

        assert self._file is not None
        try:
            data = load_json(regular_file(self._file).read_bytes())
            if data.get("version") != _SCAN_CACHE_VERSION:
                return {}
            return {Path(path): ((int(stamp[0]), int(stamp[1])), result if isinstance(result, str) else _found_from_json(result))
                    for path, stamp, result in data["rows"]}
        except FileNotFoundError:
            return {}
        except (UntrustedInputError, OSError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            log.warning("ignoring the model scan cache %s: %s", self._file, exc)  # rebuilt by this scan
            return {}


_SCAN_CACHE_VERSION = 2  # 2: control models (files refused before are probed again)


def _found_to_json(found: _Found) -> dict[str, Any]:
    data = asdict(found)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def _found_from_json(data: dict[str, Any]) -> _Found:
    paths = {k: Path(data[k]) for k in ("root", "path")}
    config = data.get("config_path")
    return _Found(**{**data, **paths, "config_path": Path(config) if config else None})


def _first_line(exc: Exception, limit: int = 300) -> str:
    """Torch's errors run over many lines; one line reaches the user, the rest the log."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


def _reason(exc: Exception) -> str:
    """A probe failure as a sentence: ValueError/OSError messages are written for users; anything
    else is a file whose contents the probe did not expect (a KeyError alone reads "'shape'")."""
    if isinstance(exc, OSError):
        return f"cannot be read ({exc.strerror or exc})"
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    detail = f"missing entry {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
    return f"not a model this app recognises (unexpected contents: {detail})"


def _probe_embedding(path: Path) -> _Found:
    """A file under <models>/embeddings/ (small: read whole to check it holds embedding vectors)."""
    from services.models.adapters import read_embedding

    embedding = read_embedding(path)
    widths = {v.shape[-1] for v in embedding.vectors.values()}
    base = "sdxl" if "clip_g" in embedding.vectors else {768: "sd1", 1024: "sd2"}.get(widths.pop())
    fmt = path.suffix.lower().lstrip(".")
    return _Found(path.parent, path, "embedding", base, fmt, path.stat().st_size)


def _probe_preprocessor(path: Path) -> _Found:
    """A file under <models>/preprocessors/: which preprocessor's weights (architecture) it holds."""
    from services.models.checkpoints import read_shapes
    from services.models.preprocessor_files import architecture_of

    fmt = "safetensors" if path.suffix.lower() == ".safetensors" else "pth"
    return _Found(path.parent, path, "preprocessor", None, fmt, path.stat().st_size,
                  architecture=architecture_of(path, read_shapes(path)))


def _probe_component_folder(folder: Path) -> _Found:
    from services.models.control_files import folder_base, folder_kind

    config = _read_json(folder / "config.json")
    class_name = config.get("_class_name")
    kind = folder_kind(config)
    if kind is not None:
        return _Found(folder.parent, folder, kind, folder_base(kind, config), "diffusers", _dir_size(folder))
    if class_name != "AutoencoderKL":
        raise ValueError(f"a diffusers {class_name or 'component'} folder; only whole pipelines, VAEs, ControlNets, "
                         "T2I-Adapters and CLIP vision encoders are supported")
    return _Found(folder.parent, folder, "vae", None, "diffusers", _dir_size(folder))


def _walk(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, form) of candidate models under root in a stable order; form: pipeline | component |
    file | skip:<reason>.  Symlinked folders are followed, each real folder once (no loops)."""
    visited: set[tuple[int, int]] = set()

    def seen(folder: str) -> bool:
        try:
            info = os.stat(folder)
        except OSError:
            return True
        key = (info.st_dev, info.st_ino)
        if key in visited:
            return True
        visited.add(key)
        return False

    for current, dirs, files in os.walk(root, followlinks=True):
        here = Path(current)
        if seen(current):
            dirs.clear()
            continue
        dirs.sort()
        if "model_index.json" in files:
            dirs.clear()
            yield here, "pipeline"
            continue
        if "config.json" in files and any(f.endswith(WEIGHT_SUFFIXES) for f in files):
            dirs.clear()  # a diffusers component folder (e.g. a VAE): config + weights are one model
            yield here, "component"
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(SIDECAR_SUFFIX)]
        for name in sorted(files):
            if not name.startswith("."):
                path = here / name
                problem = _not_a_regular_file(path)
                yield path, f"skip:{problem}" if problem else "file"


def _not_a_regular_file(path: Path) -> str | None:
    """Why the scanner must not open `path` (a FIFO blocks the reader forever), or None.  lstat
    first: a dangling link is reported, not followed into an error that stops the scan."""
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            try:
                info = path.stat()
            except OSError:
                return f"a link to {os.readlink(path)!s}, which does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a FIFO, socket or device); skipped"
    return None


# --------------------------------------------------------------------------------------------
# Cache


@dataclass
class _Entry:
    model: Any
    size_bytes: int
    on_gpu: bool = False
    pins: int = 0


@dataclass
class CacheStats:
    ram_bytes: int = 0
    vram_bytes: int = 0
    ids_in_ram: list[str] = field(default_factory=list)
    ids_on_gpu: list[str] = field(default_factory=list)


class ModelCache:
    """Loaded models in LRU order with byte budgets for RAM (models on the CPU) and VRAM.

    Over the VRAM budget the least recently used unpinned model moves back to RAM; over the RAM
    budget the least recently used unpinned model on the CPU is dropped.
    """

    def __init__(self, ram_budget: int, vram_budget: int, move: Any) -> None:
        self.ram_budget = ram_budget
        self.vram_budget = vram_budget
        self._move = move  # move(model, to_gpu: bool) -> model
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, model: Any, size_bytes: int) -> _Entry:
        entry = _Entry(model, size_bytes)
        self._entries[key] = entry
        self._trim_ram(keep=key)
        return entry

    def to_gpu(self, key: str) -> None:
        entry = self._entries[key]
        if entry.on_gpu:
            return
        self._trim_vram(room_for=entry.size_bytes, keep=key)
        entry.model = self._move(entry.model, True)
        entry.on_gpu = True

    def stats(self) -> CacheStats:
        stats = CacheStats()
        for key, entry in self._entries.items():
            if entry.on_gpu:
                stats.vram_bytes += entry.size_bytes
                stats.ids_on_gpu.append(key)
            else:
                stats.ram_bytes += entry.size_bytes
                stats.ids_in_ram.append(key)
        return stats

    def _trim_vram(self, room_for: int, keep: str) -> None:
        for key, entry in list(self._entries.items()):
            if self.stats().vram_bytes + room_for <= self.vram_budget:
                break
            if entry.on_gpu and entry.pins == 0 and key != keep:
                entry.model = self._move(entry.model, False)
                entry.on_gpu = False
        self._trim_ram(keep=keep)

    def _trim_ram(self, keep: str) -> None:
        for key, entry in list(self._entries.items()):
            if self.stats().ram_bytes <= self.ram_budget:
                break
            if not entry.on_gpu and entry.pins == 0 and key != keep:
                del self._entries[key]


# --------------------------------------------------------------------------------------------
# The local manager


class LocalModelManager(ModelManager):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._probes = _ProbeCache(Path(settings.data_dir) / "cache" / "model_scan.json")
        self._models: dict[str, ModelInfo] | None = None
        self._unrecognized: list[UnrecognizedFile] = []
        self._cache: ModelCache | None = None
        self._device: str | None = None
        self.load_seconds: dict[str, float] = {}  # how long each model took to load from disk, last time

    # --- settings-derived choices ----------------------------------------------------------

    @property
    def device(self) -> str:
        """The execution device: settings.device, with "auto" meaning CUDA where there is one."""
        if self._device is None:
            wanted = str(self.settings.device or "auto")
            if wanted == "auto":
                import torch

                wanted = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = wanted
        return self._device

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def compile_mode(self) -> str:
        """torch.compile mode for the UNet: settings.compile or $INVOKE_NODES_COMPILE.  "auto" (the
        default) on a CUDA GPU compiles in the background when triton is installed and runs the
        uncompiled UNet as CUDA graphs meanwhile, or always without triton ("graphs"); see
        nodes/core/compiled.py.  "off": plain eager."""
        mode = os.environ.get("INVOKE_NODES_COMPILE") or str(getattr(self.settings, "compile", "auto") or "auto")
        if mode not in _COMPILE_MODES:
            raise ValueError(f"unknown compile mode '{mode}' (use one of: {', '.join(_COMPILE_MODES)})")
        if mode == "auto":
            if not self.on_gpu:
                return "off"
            return AUTO_COMPILE_MODE if importlib.util.find_spec("triton") is not None else "graphs"
        return mode

    @property
    def cache_dir(self) -> Path:
        return Path(self.settings.data_dir) / "cache"

    # --- scanning ----------------------------------------------------------------------------

    def roots(self) -> list[Path]:
        roots = [Path(self.settings.models_dir), *(Path(p) for p in self.settings.extra_model_dirs)]
        return [r.expanduser() for r in roots if r.expanduser().is_dir()]

    def rescan(self) -> None:
        found: list[_Found] = []
        unrecognized: list[UnrecognizedFile] = []
        for root in self.roots():
            for path, form in _walk(root):
                if form.startswith("skip:"):
                    if path.suffix.lower() not in _IGNORED_SUFFIXES:
                        unrecognized.append(UnrecognizedFile(str(path), form[5:]))
                    continue
                if form == "pipeline":
                    result = self._probes.probe(path, path / "model_index.json", _probe_diffusers_folder)
                elif form == "component":
                    result = self._probes.probe(path, path / "config.json", _probe_component_folder)
                elif path.suffix.lower() in WEIGHT_SUFFIXES:
                    folder = path.relative_to(root).parts[0]
                    probe = {EMBEDDINGS_FOLDER: _probe_embedding, PREPROCESSORS_FOLDER: _probe_preprocessor}.get(folder, _probe_file)
                    result = self._probes.probe(path, path, probe)
                elif path.suffix.lower() in _IGNORED_SUFFIXES:
                    continue
                else:
                    result = (f"not a model file: use .safetensors (or .ckpt/.pth), or a diffusers folder "
                              f"with model_index.json (got '{path.suffix or path.name}')")
                if isinstance(result, str):
                    unrecognized.append(UnrecognizedFile(str(path), result))
                else:
                    result.root = root
                    found.append(result)
        self._probes.save()
        with self._lock:
            self._models = self._assign_ids(found)
            self._unrecognized = unrecognized

    @staticmethod
    def _assign_ids(found: list[_Found]) -> dict[str, ModelInfo]:
        models: dict[str, ModelInfo] = {}
        for item in found:
            relative = item.path.relative_to(item.root)
            stem = relative if item.format == "diffusers" else relative.with_suffix("")
            model_id = base_id = slug(str(stem))
            if model_id in models:
                model_id = base_id = f"{base_id}-{item.format}"
            n = 2
            while model_id in models:
                model_id, n = f"{base_id}-{n}", n + 1
            models[model_id] = ModelInfo(
                id=model_id, name=stem.name, kind=item.kind, base=item.base, format=item.format, path=str(item.path),
                size_bytes=item.size_bytes, variant=item.variant, architecture=item.architecture,
                config_path=str(item.config_path) if item.config_path else None)
        return models

    def _known(self) -> dict[str, ModelInfo]:
        with self._lock:
            if self._models is None:
                self.rescan()
            assert self._models is not None
            return self._models

    def list(self, kind: str | None = None) -> list[ModelInfo]:
        if kind is not None and kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind '{kind}' (known: {', '.join(MODEL_KINDS)})")
        return [m for m in self._known().values() if kind is None or m.kind == kind]

    def unrecognized(self) -> list[UnrecognizedFile]:
        self._known()
        return list(self._unrecognized)

    def get(self, model_id: str, kind: str | None = None) -> ModelInfo:
        info = self._known().get(model_id)
        if info is None:
            self.rescan()  # the user may have added the file since the last scan
            info = self._known().get(model_id)
        if info is None or (kind is not None and info.kind != kind):
            what = f"{kind} model" if kind else "model"
            for item in self.unrecognized():  # the file is there but was refused: say why
                if model_id in self._file_ids(Path(item.path)):
                    raise ModelNotFoundError(f"{what} '{model_id}' ({item.path}) was refused: {item.reason}")
            known = ", ".join(m.id for m in self.list(kind)) or "none"
            raise ModelNotFoundError(f"no {what} with id '{model_id}' in {self._roots_text()} (known: {known})")
        return info

    def _file_ids(self, path: Path) -> set[str]:
        """Ids a user may have meant for a file: its name, its path under a models folder."""
        ids = {slug(path.stem)}
        for root in self.roots():
            if path.is_relative_to(root):
                ids.add(slug(str(path.relative_to(root).with_suffix(""))))
        return ids

    def _roots_text(self) -> str:
        return ", ".join(str(p) for p in [Path(self.settings.models_dir), *self.settings.extra_model_dirs])

    # --- loading -----------------------------------------------------------------------------

    def _model_cache(self) -> ModelCache:
        if self._cache is None:
            from services.models.loading import move_model

            device = self.device
            self._cache = ModelCache(int(self.settings.ram_cache_gb * GB), int(self.settings.vram_cache_gb * GB),
                                     lambda model, to_gpu: move_model(model, device if to_gpu else "cpu"))
        return self._cache

    def load(self, model_id: str) -> Any:
        with self._lock:
            return self._load(model_id).model

    def _load(self, model_id: str) -> _Entry:
        info = self.get(model_id)
        cache = self._model_cache()
        entry = cache.get(model_id)
        if entry is None:
            from services.models.loading import load_from_disk, model_bytes

            started = time.perf_counter()
            try:
                model = load_from_disk(info, self.dtype_name, self.cache_dir, self.device)
            except (ValueError, OSError) as exc:  # written for users (a refused pickle, an unreadable file)
                raise ModelLoadError(model_id, f"cannot load model '{model_id}' ({info.path}): {_first_line(exc)}") from None
            except Exception as exc:  # a file that probed as a model but does not load (e.g. corrupt)
                log.warning("loading model %s (%s) failed", model_id, info.path, exc_info=True)
                raise ModelLoadError(model_id, f"cannot load model '{model_id}' ({info.path}): the file looks like a "
                                     f"{info.kind} model but does not load ({type(exc).__name__}: {_first_line(exc)})") from None
            self.load_seconds[model_id] = time.perf_counter() - started
            entry = cache.put(model_id, model, model_bytes(model))
        if self.on_gpu:
            cache.to_gpu(model_id)
        return entry

    @property
    def dtype_name(self) -> str:
        """Weights are float16 on the GPU and float32 on the CPU (where half precision is slow)."""
        return "float16" if self.on_gpu else "float32"

    @contextlib.contextmanager
    def use(self, *model_ids: str) -> Iterator[list[Any]]:
        entries: list[_Entry] = []
        try:
            with self._lock:
                for model_id in model_ids:
                    entry = self._load(model_id)
                    entry.pins += 1  # pinned: loading another model cannot evict it while in use
                    entries.append(entry)
            yield [e.model for e in entries]
        finally:
            with self._lock:
                for entry in entries:
                    entry.pins -= 1

    def face_detector(self, name: str) -> Any:
        from .face_detectors import DetectorMissingError, open_detector

        try:
            return open_detector(self.settings.models_dir, name, self.device)
        except DetectorMissingError as exc:
            raise ModelNotFoundError(str(exc)) from None

    def preprocessor(self, architecture: str) -> ModelInfo:
        """The preprocessor weights of `architecture` (nodes.core.annotators) found in the models folders;
        ModelNotFoundError says which file to put where."""
        from services.models.preprocessor_files import missing_message

        for attempt in range(2):
            if attempt:
                self.rescan()  # the user may have added the file since the last scan
            for info in self.list("preprocessor"):
                if info.architecture == architecture:
                    return info
        raise ModelNotFoundError(missing_message(architecture, Path(self.settings.models_dir)))

    def cache_stats(self) -> CacheStats:
        with self._lock:
            return self._model_cache().stats() if self._cache is not None else CacheStats()
