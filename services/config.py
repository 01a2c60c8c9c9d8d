"""Settings and user folders (platformdirs), persisted as JSON in the user config dir.

Environment overrides: INVOKE_NODES_ROOT puts every folder (config included) under one root;
INVOKE_NODES_MODELS, INVOKE_NODES_PLUGINS, INVOKE_NODES_OUTPUTS override single folders.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from services.fsutil import atomic_write_text

APP_NAME = "invoke-nodes"


def _default_dirs() -> tuple[Path, Path]:
    root = os.environ.get("INVOKE_NODES_ROOT")
    if root:
        return Path(root), Path(root) / "config"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)), Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


_NOT_SAVED = frozenset({"data_dir", "config_dir", "writes_outputs_only"})


@dataclass
class Settings:
    data_dir: Path
    config_dir: Path
    models_dir: Path
    outputs_dir: Path
    sessions_dir: Path
    plugins_dir: Path
    extra_model_dirs: list[Path] = field(default_factory=list)
    theme: str = "dark"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # How the denoiser runs on CUDA: auto | off | graphs | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs | default.
    # auto: reduce-overhead when triton is installed, else graphs (CUDA graphs of the uncompiled UNet).
    # A new size runs as a CUDA graph while it compiles in the background; compiled kernels are kept in
    # the cache folder for the next launch.  off: plain eager.
    compile: str = "auto"
    # The API's executor: "in-process", or "worker" (models in a separate process, as the canvas does).
    api_executor: str = "in-process"
    # Run generation on Ray instead (the "ray" executor; the canvas uses it when set): "local" or
    # "local:N" (a Ray on this machine with a worker per GPU, or N workers), or "ray://HOST:PORT".
    cluster: str = ""
    # A node in the AI worker that reports nothing for this long is taken as hung: the worker is stopped.
    worker_hang_s: float = 900.0
    ram_cache_gb: float = 6.0
    vram_cache_gb: float = 8.0
    recent_files: list[str] = field(default_factory=list)
    # folders outside the outputs folder that nodes (save_image) may write to: see nodes/core/writes.py
    allowed_write_dirs: list[Path] = field(default_factory=list)
    # set for this process only (never saved): an API server without a token writes to outputs only
    writes_outputs_only: bool = False

    @classmethod
    def load(cls) -> "Settings":
        data_dir, config_dir = _default_dirs()
        settings = cls(data_dir=data_dir, config_dir=config_dir, models_dir=data_dir / "models",
                       outputs_dir=data_dir / "outputs", sessions_dir=data_dir / "sessions", plugins_dir=data_dir / "plugins")
        saved = settings.path
        if saved.is_file():
            try:
                settings._apply(json.loads(saved.read_text("utf-8")))
            except (ValueError, TypeError, OSError):
                pass  # a broken settings file must not stop the app; it is rewritten on the next save
        for env, name in (("INVOKE_NODES_MODELS", "models_dir"), ("INVOKE_NODES_PLUGINS", "plugins_dir"),
                          ("INVOKE_NODES_OUTPUTS", "outputs_dir")):
            if os.environ.get(env):
                setattr(settings, name, Path(os.environ[env]))
        return settings

    def write_dirs(self) -> list[Path]:
        """Folders besides the outputs folder that nodes may write to (nodes/core/writes.py)."""
        return [] if self.writes_outputs_only else list(self.allowed_write_dirs)

    @property
    def path(self) -> Path:
        return self.config_dir / "settings.json"

    def _apply(self, data: dict[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for key, value in data.items():
            if key not in known or key in _NOT_SAVED:
                continue
            if key.endswith("_dir"):
                value = Path(value)
            elif key in ("extra_model_dirs", "allowed_write_dirs"):
                value = [Path(v) for v in value]
            setattr(self, key, value)

    def save(self) -> None:
        data = {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k.endswith("_dirs") else v)
                for k, v in asdict(self).items() if k not in _NOT_SAVED}
        atomic_write_text(self.path, json.dumps(data, indent=2))

    def ensure_dirs(self) -> None:
        for path in (self.config_dir, self.models_dir, self.outputs_dir, self.sessions_dir, self.plugins_dir):
            path.mkdir(parents=True, exist_ok=True)
