"""Start `invoke-nodes api` in a child process on a free loopback port and wait until it answers.

Used by the API tests and bench/api.py, which both talk to a real server over the network.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.ws_url = base_url.replace("http://", "ws://", 1) + "/api/v1/events"
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")


@contextmanager
def api_server(root: Path, *, token: str | None = None, extra_args: tuple[str, ...] = (),
               timeout: float = 30.0) -> Iterator[ServerProcess]:
    """A running server whose user folders are all under `root` (INVOKE_NODES_ROOT)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # The server runs inside `root` so that relative paths in node values (a save_image folder)
    # land there, never in the caller's working directory.
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "INVOKE_NODES_ROOT": str(root), "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
    env.pop("INVOKE_NODES_TOKEN", None)
    args = [sys.executable, "-m", "app", "api", "--port", str(port), "--log-level", "warning", *extra_args]
    if token is not None:
        args += ["--token", token]
    log_path = root / f"api-server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server, token, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _wait_ready(server: ServerProcess, token: str | None, timeout: float) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"API server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.base_url + "/api/v1/health", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"API server did not answer within {timeout} s:\n{server.log()}")
