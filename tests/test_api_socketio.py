"""Live events over Socket.IO (/ws/socket.io) with a real python-socketio client against a real
`invoke-nodes api` server on loopback: the same events as the plain WebSocket, rooms per session,
unsubscribe, bad messages and the token."""
from __future__ import annotations

import base64
import contextlib
import io
import re
import threading
import time

import httpx
import pytest
import socketio
import uvicorn
from PIL import Image

from app.api.app import create_app
from app.api.launch import REPO_ROOT, api_server, free_port
from tests.test_api import SLOW_PLUGIN, _wait_idle, create, events_until, subscribe

PATH = "/ws/socket.io"
FINAL = ("session_completed", "session_canceled")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-root")
    (root / "plugins").mkdir()
    (root / "plugins" / "slow_steps.py").write_text(SLOW_PLUGIN)
    with api_server(root) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        yield client


def sio_client(server, **connect_args) -> socketio.SimpleClient:
    client = socketio.SimpleClient()
    client.connect(server.base_url, socketio_path=PATH, wait_timeout=10, **connect_args)
    return client


def sio_subscribe(client: socketio.SimpleClient, session_id: str) -> None:
    assert client.call("subscribe_session", {"session": session_id}, timeout=10) == {
        "type": "subscribed", "session_id": session_id}


def sio_events_until(client: socketio.SimpleClient, *final: str, timeout: float = 30) -> list[dict]:
    events: list[dict] = []
    while not events or events[-1]["type"] not in final:
        name, payload = client.receive(timeout=timeout)
        assert name == payload["type"]  # each event is named after its type
        events.append(payload)
    return events


def test_socketio_gets_the_plain_sockets_events_in_order_with_the_same_payloads(http, server):
    sid = create(http, {"nodes": [{"id": "slow", "type": "slow_steps", "steps": 3, "delay": 0},
                                  {"id": "after", "type": "integer", "value": 7}]})["id"]
    with sio_client(server) as client, subscribe(server, sid) as plain:
        sio_subscribe(client, sid)
        assert http.put(f"/api/v1/sessions/{sid}/invoke").status_code == 202
        events = sio_events_until(client, *FINAL)
        assert events == events_until(plain, *FINAL)  # one source: the same objects, times and previews
    assert [(e["type"], e["node_id"]) for e in events] == [
        ("node_started", "slow"), ("node_progress", "slow"), ("node_progress", "slow"), ("node_progress", "slow"),
        ("node_completed", "slow"), ("node_started", "after"), ("node_completed", "after"), ("session_completed", None)]
    assert {e["session_id"] for e in events} == {sid}
    progress = [e["data"] for e in events if e["type"] == "node_progress"]
    assert [(p["step"], p["total"], p["message"]) for p in progress] == [(1, 3, "counting"), (2, 3, "counting"), (3, 3, "counting")]
    assert "preview" in progress[0]  # previews are thinned to ~20 a second: the first and the last always
    preview = Image.open(io.BytesIO(base64.b64decode(progress[-1]["preview"].removeprefix("data:image/png;base64,"))))
    assert preview.size == (256, 171) and preview.convert("RGB").getpixel((0, 0)) == (200, 2, 0)  # step 3's colour
    assert events[4]["data"] == {"state": "completed", "outputs": {"value": 3}, "index": []}
    assert events[6]["data"] == {"state": "completed", "outputs": {"value": 7}, "index": []}
    assert events[7]["data"] == {"errors": {}, "complete": True}


def test_unsubscribe_stops_the_events_of_that_session_only(http, server):
    a = create(http, {"nodes": [{"id": "x", "type": "integer", "value": 1}]})["id"]
    b = create(http, {"nodes": [{"id": "y", "type": "integer", "value": 2}]})["id"]
    with sio_client(server) as leaving, sio_client(server) as staying:
        for client in (leaving, staying):
            sio_subscribe(client, a)
        sio_subscribe(leaving, b)
        assert leaving.call("unsubscribe_session", {"session": a}, timeout=10) == {"type": "unsubscribed", "session_id": a}
        http.put(f"/api/v1/sessions/{a}/invoke")
        _wait_idle(http, a)
        http.put(f"/api/v1/sessions/{b}/invoke")
        # The room of `a` keeps its other member; `leaving` gets only the events of `b`.
        assert [e["type"] for e in sio_events_until(staying, *FINAL)] == ["node_started", "node_completed", "session_completed"]
        got = sio_events_until(leaving, *FINAL)
        assert [(e["session_id"], e["node_id"]) for e in got] == [(b, "y"), (b, "y"), (b, None)]
        with pytest.raises(socketio.exceptions.TimeoutError):
            leaving.receive(timeout=0.3)


def test_bad_subscriptions_are_answered_with_errors(http, server):
    sid = create(http)["id"]
    with sio_client(server) as client:
        for data, session_id, words in (("hello", None, '"session" must be a session id string'),
                                        ({"session_id": sid}, None, '"session" must be a session id string'),
                                        ({"session": 5}, None, '"session" must be a session id string'),
                                        ({"session": "0" * 32}, "0" * 32, "no session")):
            reply = client.call("subscribe_session", data, timeout=10)
            assert reply["type"] == "error" and reply["session_id"] == session_id and words in reply["message"], reply
        reply = client.call("unsubscribe_session", ["x"], timeout=10)
        assert reply == {"type": "error", "session_id": None, "message": '"session" must be a session id string'}
        sio_subscribe(client, sid)  # the connection is still usable


def test_a_deeply_nested_packet_is_dropped_and_the_server_serves_on(http, server):
    sid = create(http)["id"]
    deep: object = sid
    for _ in range(300):  # as deep as the client can write (its packer recurses too)
        deep = [deep]
    with sio_client(server) as client, pytest.raises(socketio.exceptions.TimeoutError):
        client.call("subscribe_session", {"session": deep}, timeout=3)  # over the depth limit: dropped unread
    with sio_client(server) as client:
        sio_subscribe(client, sid)


def test_readme_event_examples_run_as_written(server):
    readme = (REPO_ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index("### Live events"):readme.index("## Benchmarks")]
    setup, plain, socket_io = re.findall(r"```python\n(.*?)```", section, re.S)
    address = server.base_url.removeprefix("http://")
    for example in (plain, socket_io):
        namespace: dict = {}
        exec(setup.replace("127.0.0.1:9090", address), namespace)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(example.replace("127.0.0.1:9090", address), namespace)
        assert printed.getvalue().splitlines() == ["node_started noise", "node_completed noise", "session_completed None"]


def test_socketio_needs_the_token_like_every_route(tmp_path):
    with api_server(tmp_path / "root", token="s3cret") as server:
        sid = httpx.post(f"{server.base_url}/api/v1/sessions/", headers={"Authorization": "Bearer s3cret"}).json()["id"]
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(socketio.exceptions.ConnectionError, match="401"):
                sio_client(server, headers=headers)
        with pytest.raises(socketio.exceptions.ConnectionError):  # websocket only: the handshake is refused
            sio_client(server, headers={"Authorization": "Bearer wrong"}, transports=["websocket"])
        with sio_client(server, headers={"Authorization": "Bearer s3cret"}) as client:
            sio_subscribe(client, sid)
            assert client.client.transport() == "websocket"  # the upgrade carried the token too
        client = socketio.SimpleClient()  # ?token= as the browser page sends it
        client.connect(f"{server.base_url}?token=s3cret", socketio_path=PATH, wait_timeout=10)
        with client:
            sio_subscribe(client, sid)


def test_the_engine_stops_sending_a_sessions_events_once_its_room_is_empty(invoker):
    # In-process, so the event bus can be asked whether anybody still listens.
    server = uvicorn.Server(uvicorn.Config(create_app(invoker), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        base_url = f"http://127.0.0.1:{server.config.port}"
        sid = httpx.post(f"{base_url}/api/v1/sessions/").json()["id"]
        listening = lambda: invoker.services.events.wants(sid)  # noqa: E731
        clients = [socketio.SimpleClient(), socketio.SimpleClient()]
        for client in clients:
            client.connect(base_url, socketio_path=PATH, wait_timeout=10)
            sio_subscribe(client, sid)
        assert listening()
        clients[0].disconnect()
        time.sleep(0.3)
        assert listening()  # the room still has a member
        clients[1].disconnect()
        deadline = time.monotonic() + 5
        while listening() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not listening()
    finally:
        server.should_exit = True
        thread.join(10)
