"""Facts about the machine the canvas needs before any window or model exists (no torch)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
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
