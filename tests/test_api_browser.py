"""/static/test.html in headless Chromium: it creates a session from its graph, invokes it, lists the
events from the plain WebSocket or Socket.IO and shows the resulting image, against a real API server."""
from __future__ import annotations

import io
import shutil

import httpx
import pytest
from PIL import Image

from app.api.launch import api_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.parametrize(("transport", "token"), [("websocket", None), ("socketio", None), ("socketio", "s3cret")])
def test_page_runs_a_graph_and_shows_events_and_image(tmp_path, transport, token):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed")
    with api_server(tmp_path / "root", token=token) as server, sync_api.sync_playwright() as playwright:
        # The system chromium, never a downloaded one; a fresh profile each run.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            socket_io_requests: list[str] = []
            page.on("request", lambda request: "/ws/socket.io/" in request.url and socket_io_requests.append(request.url))
            page.goto(f"{server.base_url}/static/test.html?transport={transport}" + (f"&token={token}" if token else ""))
            assert page.input_value("#transport") == transport
            page.click("#run")
            page.wait_for_function("document.getElementById('status').textContent !== 'running'", timeout=30_000)
            events = page.locator("#events li").all_inner_texts()
            assert page.inner_text("#status") == "done", events
            assert events[0].startswith("created session ")
            completed = [line for line in events if line.startswith("node_completed")]
            assert completed == ["node_completed node noise (completed)", "node_completed node big (completed)",
                                 "node_completed node show (completed)"]
            assert events[-1] == "session_completed"
            page.wait_for_function("document.getElementById('result').complete "
                                   "&& document.getElementById('result').naturalWidth > 0", timeout=10_000)
            size = page.evaluate("[document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]")
            assert size == [256, 192]  # 128x96 noise scaled by 2
            name = page.get_attribute("#result", "data-image-name")
            assert page_errors == []
            assert bool(socket_io_requests) == (transport == "socketio")  # the events came the chosen way
        finally:
            context.close()
        image = Image.open(io.BytesIO(httpx.get(f"{server.base_url}/api/v1/images/{name}", params={"token": token} if token else None).content))
        assert image.size == (256, 192)
