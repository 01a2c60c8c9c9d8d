"""Find nodes: the built-ins in this package and .py files in the user's plugin folder."""
from __future__ import annotations

import importlib
import logging
import importlib.util
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .base import REGISTRY, BaseInvocation

_NOT_NODE_MODULES = {"base", "outputs", "discovery", "context"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginError:
    """A plugin that failed to load: reported, skipped, and the app goes on."""

    name: str
    path: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"plugin '{self.name}' ({self.path}) failed to load: {self.message}"


def load_builtin_nodes() -> dict[str, type[BaseInvocation]]:
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.ispkg or module.name in _NOT_NODE_MODULES or module.name.startswith("_"):
            continue
        importlib.import_module(f"{__package__}.{module.name}")
    return REGISTRY


def load_plugins(folder: Path | str | None) -> list[PluginError]:
    """Import every `*.py` in `folder` (files starting with `_` are skipped)."""
    errors: list[PluginError] = []
    if folder is None or not Path(folder).is_dir():
        return errors
    for path in sorted(Path(folder).glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"invoke_nodes_plugin_{path.stem}"
        if module_name in sys.modules:
            continue
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except BaseException as exc:  # noqa: BLE001 - a plugin must never take the app down
            if isinstance(exc, KeyboardInterrupt):
                raise
            sys.modules.pop(module_name, None)
            for node_type in [t for t, cls in REGISTRY.items() if cls.__module__ == module_name]:
                del REGISTRY[node_type]
            errors.append(PluginError(path.stem, str(path), f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    return errors


def load_all_nodes(plugins_dir: Path) -> list[PluginError]:
    """Register the built-in nodes and the user's plugins; broken plugins are returned, not raised."""
    load_builtin_nodes()
    errors = load_plugins(plugins_dir)
    for error in errors:
        log.error("%s\n%s", error, error.traceback)
    return errors
