"""Build the desktop app: `python packaging/build.py [--variant cpu|cuda]`.

Runs PyInstaller on packaging/invoke-nodes.spec with the Python that runs this script (its torch
decides the variant: a CUDA torch makes the `cuda` build, a CPU-only torch the `cpu` one), writes
dist/invoke-nodes/ (one folder) and, on Linux, dist/invoke-nodes-<version>-linux-x86_64-<variant>.tar.gz,
prints the size, build time and start-up time, then runs the smoke test (tests/test_packaging.py).

The archive unpacks into a prefix such as ~/.local or /usr/local:
    lib/invoke-nodes/...                      the app folder
    bin/invoke-nodes -> ../lib/invoke-nodes/invoke-nodes
    share/applications/invoke-nodes.desktop
    share/icons/hicolor/256x256/apps/invoke-nodes.png
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from importlib.metadata import PackageNotFoundError, version
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "invoke-nodes.spec"
DIST = ROOT / "dist"
APP_DIR = DIST / "invoke-nodes"
WORK = ROOT / "build" / "pyinstaller"
EXE = APP_DIR / ("invoke-nodes-cli.exe" if os.name == "nt" else "invoke-nodes")
# Nodes that need torchvision (spandrel's architectures and the face detector import it)
TORCHVISION_NODES = ("upscale", "face_restore")


def torch_variant() -> str:
    """'cuda' or 'cpu', from the torch installed beside this Python (read from metadata: no import)."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        sys.exit("build.py: this Python has no torch; run it with the project's venv (or a CPU venv)")
    if "+cpu" in torch_version:
        return "cpu"
    if "+cu" in torch_version:  # PyTorch's own CUDA wheels (Windows): the CUDA libraries are inside torch
        return "cuda"
    try:
        version("nvidia-cuda-runtime")
    except PackageNotFoundError:
        try:
            version("nvidia-cuda-runtime-cu12")
        except PackageNotFoundError:
            return "cpu"  # e.g. macOS wheels: no CUDA libraries to carry
    return "cuda"


def has(package: str) -> bool:
    try:
        version(package)
        return True
    except PackageNotFoundError:
        return False


def folder_size(path: Path) -> tuple[int, int]:
    total = count = 0
    for entry in path.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            total += entry.stat().st_size
            count += 1
    return total, count


def mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"


def run_pyinstaller(variant: str) -> float:
    env = {**os.environ, "INVOKE_NODES_VARIANT": variant}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
                    "--distpath", str(DIST), "--workpath", str(WORK), str(SPEC)], cwd=ROOT, env=env, check=True)
    return time.monotonic() - started


def startup_seconds(runs: int = 3) -> float:
    """Best of a few `--version` runs: the time to start the frozen interpreter and load the app's entry."""
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([str(EXE), "--version"], check=True, capture_output=True)
        best = min(best, time.monotonic() - started)
    return best


def write_build_info(variant: str, app_version: str, seconds: float, size: int, files: int) -> dict:
    """BUILD-INFO.json in the app folder: what this build carries, for the smoke test and bug reports."""
    vision = has("torchvision")
    info = {
        "name": "invoke-nodes", "version": app_version, "variant": variant, "platform": sys.platform,
        "machine": platform.machine(), "python": platform.python_version(), "torch": version("torch"),
        "torchvision": version("torchvision") if vision else None,
        "nodes_missing": [] if vision else list(TORCHVISION_NODES),
        "build_seconds": round(seconds), "size_bytes": size, "files": files,
    }
    (APP_DIR / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
    return info


def desktop_entry() -> bytes:
    return (ROOT / "packaging" / "invoke-nodes.desktop").read_bytes()


def write_archive(variant: str, app_version: str) -> Path:
    target = DIST / f"invoke-nodes-{app_version}-linux-{platform.machine()}-{variant}.tar.gz"

    now = int(time.time())

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size, member.mode, member.mtime = len(data), 0o644, now
        tar.addfile(member, BytesIO(data))

    # Small entries and the executable first, the GBs of _internal/ last: the smoke test (and anyone
    # listing the archive) finds the launcher, menu entry and icon without decompressing everything.
    # Level 6: within a few % of level 9's size on these mostly dense libraries, far faster.
    with tarfile.open(target, "w:gz", compresslevel=6) as tar:
        add_bytes(tar, "share/applications/invoke-nodes.desktop", desktop_entry())
        add_bytes(tar, "share/icons/hicolor/256x256/apps/invoke-nodes.png", (ROOT / "assets" / "icon.png").read_bytes())
        link = tarfile.TarInfo("bin/invoke-nodes")
        link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "../lib/invoke-nodes/invoke-nodes", 0o755, now
        tar.addfile(link)
        tar.add(APP_DIR, arcname="lib/invoke-nodes", recursive=False)
        for entry in sorted(APP_DIR.iterdir(), key=lambda p: (p.is_dir(), p.name)):  # files, then _internal/
            tar.add(entry, arcname=f"lib/invoke-nodes/{entry.name}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("cpu", "cuda"),
                        help="check that this Python's torch is of this kind (default: whichever it is)")
    parser.add_argument("--no-archive", action="store_true", help="skip the Linux .tar.gz")
    parser.add_argument("--no-test", action="store_true", help="skip the smoke test")
    parser.add_argument("--keep-work", action="store_true", help="keep build/pyinstaller (PyInstaller's cache)")
    args = parser.parse_args(argv)

    variant = torch_variant()
    if args.variant and args.variant != variant:
        hint = ("a CPU venv: python -m venv /tmp/venv-cpu, pip install a torch '+cpu' wheel and the project's "
                "other dependencies, pyinstaller" if args.variant == "cpu" else "the project's venv with CUDA torch")
        sys.exit(f"build.py: --variant {args.variant}, but this Python's torch is the {variant} build; run it with {hint}")
    app_version = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    print(f"building invoke-nodes {app_version} ({variant}, torch {version('torch')}) with {sys.executable}", flush=True)

    seconds = run_pyinstaller(variant)
    size, files = folder_size(APP_DIR)
    info = write_build_info(variant, app_version, seconds, size, files)
    print(f"\nbuilt {APP_DIR}: {mib(size)} in {files:,} files, in {seconds / 60:.1f} min", flush=True)
    if info["nodes_missing"]:
        print(f"  no torchvision in this Python: nodes {', '.join(info['nodes_missing'])} will not run in this build")
    print(f"  start-up (--version, best of 3): {startup_seconds():.2f} s", flush=True)

    if sys.platform.startswith("linux") and not args.no_archive:
        started = time.monotonic()
        archive = write_archive(variant, app_version)
        print(f"  archive {archive.name}: {mib(archive.stat().st_size)} in {time.monotonic() - started:.0f} s", flush=True)
    if not args.keep_work:
        shutil.rmtree(WORK, ignore_errors=True)  # GBs of intermediate copies; the next build starts clean anyway
        shutil.rmtree(ROOT / "build" / "metadata", ignore_errors=True)

    if args.no_test:
        return 0
    print("\nsmoke test: tests/test_packaging.py", flush=True)
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "packaging",
                           str(ROOT / "tests" / "test_packaging.py")], cwd=ROOT)
    return test.returncode


if __name__ == "__main__":
    sys.exit(main())
