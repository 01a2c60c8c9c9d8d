"""Where nodes that write files (save_image, future exporters) may write: the one policy.

- Inside the outputs folder by default; a relative folder is taken inside it.
- Any other folder only when the user lists it (or a folder above it) in the settings'
  `allowed_write_dirs`; links are resolved first, so a link cannot lead outside.
- Never over an existing file unless the node's `overwrite` field is on: otherwise the next free
  numbered name (`name-1.png`, `name-2.png`, ...).
- Nothing is created when the write is refused or fails: folders are made only for the write and
  removed again if it fails.
- A server without a token (`Settings.writes_outputs_only`) allows the outputs folder only.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from nodes.base import NodeInputError


def target_folder(outputs_dir: Path, allowed_dirs: Sequence[Path], folder: str, default: str,
                  field: str = "folder") -> Path:
    """The resolved folder a node may write into; NodeInputError(field) names the rule it breaks.
    allowed_dirs: the folders besides the outputs folder the settings allow (none on a tokenless server)."""
    outputs = Path(outputs_dir).expanduser()
    wanted = Path(folder).expanduser() if folder else Path(default)
    resolved = (wanted if wanted.is_absolute() else outputs / wanted).resolve()
    roots = [outputs.resolve(), *(Path(p).expanduser().resolve() for p in allowed_dirs)]
    if not any(resolved.is_relative_to(root) for root in roots):
        others = ", ".join(str(r) for r in roots[1:]) or "none; add folders to allowed_write_dirs in the settings"
        raise NodeInputError(field, f"{resolved} is outside the folders nodes may write to: the outputs folder "
                                    f"{roots[0]} and the allowed folders ({others})")
    if resolved.exists() and not resolved.is_dir():
        raise NodeInputError(field, f"{resolved} exists and is not a folder")
    return resolved


def file_name(name: str, suffix: str, field: str = "filename") -> str:
    if "/" in name or "\\" in name or "\0" in name:
        raise NodeInputError(field, "a file name, not a path (put folders in 'folder')")
    if name in (".", "..") or not name.strip() or len(name) > 200:
        raise NodeInputError(field, f"not a usable file name: {name[:80]!r}")
    return name if name.lower().endswith(suffix) else name + suffix


def free_path(folder: Path, name: str, overwrite: bool) -> Path:
    """`folder/name`, or with overwrite off and the file there, the first free `stem-N.suffix`."""
    path = folder / name
    if overwrite or not os.path.lexists(path):
        return path
    stem, suffix = os.path.splitext(name)
    n = 1
    while os.path.lexists(folder / f"{stem}-{n}{suffix}"):
        n += 1
    return folder / f"{stem}-{n}{suffix}"


def write_into(folder: Path, name: str, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Create the folder (only now), pick the name, write; remove the folders made here if it fails."""
    made: list[Path] = []
    missing = folder
    while not missing.exists():
        made.append(missing)
        missing = missing.parent
    try:
        for path in reversed(made):
            path.mkdir()
        target = free_path(folder, name, overwrite)
        write(target)
        return target
    except BaseException:
        for path in made:
            try:
                path.rmdir()
            except OSError:
                break
        raise
