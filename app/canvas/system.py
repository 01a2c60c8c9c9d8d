"""Facts about the machine the canvas needs before any window or model exists (no torch)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys


def display_problem() -> str | None:
    """Why no window can be opened, or None.  Dear PyGui aborts the whole process when it cannot
    open a display, so we ask X ourselves first."""
    if sys.platform != "linux":
        return None
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return "no display: DISPLAY is not set (run it on a desktop, or under Xvfb: xvfb-run invoke-nodes)"
    if not os.environ.get("DISPLAY"):
        return None  # Wayland without XWayland variable: let GLFW try
    name = ctypes.util.find_library("X11")
    if name is None:
        return None  # cannot check; GLFW will tell
    xlib = ctypes.CDLL(name)
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = xlib.XOpenDisplay(None)
    if not handle:
        return f"cannot open display {os.environ['DISPLAY']!r} (is the X server running and reachable?)"
    xlib.XCloseDisplay(handle)
    return None


def detect_device(setting: str = "auto") -> str:
    """The device label for the status bar.  Torch is not imported: a configured device wins,
    otherwise an NVIDIA driver being present means the GPU will be used."""
    if setting and setting != "auto":
        return "GPU (" + setting + ")" if setting.startswith("cuda") else setting.upper()
    if os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi"):
        return "GPU (CUDA)"
    if sys.platform == "darwin":
        return "GPU (MPS)"
    return "CPU"


def start_virtual_display(width: int, height: int) -> tuple[subprocess.Popen, str] | None:
    """Start an Xvfb screen of this size for headless windows (tests, benchmarks, screenshots).

    Returns (process, DISPLAY value), or None when Xvfb is not installed or did not start."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    read, write = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()  # Xvfb writes its display number once it accepts clients
    if not number:
        proc.kill()
        return None
    return proc, f":{number}"
