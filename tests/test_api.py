"""The HTTP API against a real `invoke-nodes api` server on a free loopback port: sessions, images,
nodes, models, the event socket, bad input, the token and what the server process loads."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from app.api.launch import api_server
from app.api.errors import ApiError
from app.api.persist import DurableAppends
from app.api.server import parse_args, startup_warning
from app.api.websocket import QUEUE_LIMIT, Connection

# A plugin node dropped into the server's plugin folder: it must reach the API with no API code,
# and it reports progress with a preview every step (so progress and cancel can be watched).
SLOW_PLUGIN = textwrap.dedent('''
    import time
    from typing import ClassVar, Literal

    from PIL import Image

    from nodes.base import BaseInvocation, InputField
    from nodes.outputs import IntOutput


    class SlowStepsInvocation(BaseInvocation):
        """Count steps slowly, with a preview image each step (an API test plugin)."""

        type: Literal["slow_steps"] = "slow_steps"
        cacheable: ClassVar[bool] = False
        steps: int = InputField(10, ge=1, le=1000)
        delay: float = InputField(0.01, ge=0, le=1)

        def invoke(self, context) -> IntOutput:
            for step in range(self.steps):
                context.progress(step + 1, self.steps, "counting", preview=Image.new("RGB", (300, 200), (200, step % 256, 0)))
                time.sleep(self.delay)
            return IntOutput(value=self.steps)
''')

NOISE_GRAPH = {
    "nodes": [{"id": "noise", "type": "noise_image", "width": 64, "height": 48, "scale": 4, "seed": 5},
              {"id": "half", "type": "scale", "factor": 0.5},
              {"id": "show", "type": "show_image"}],
    "links": [{"from_node": "noise", "from_field": "image", "to_node": "half", "to_field": "image"},
              {"from_node": "half", "from_field": "image", "to_node": "show", "to_field": "image"}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-root")
    (root / "plugins").mkdir()
    (root / "plugins" / "slow_steps.py").write_text(SLOW_PLUGIN)
    with api_server(root, extra_args=("--max-upload-mb", "1")) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        yield client


def create(http, graph=None) -> dict:
    response = http.post("/api/v1/sessions/", json=graph)
    assert response.status_code == 201, response.text
    return response.json()


def subscribe(server, session_id: str, query: str = ""):
    socket = connect(server.ws_url + query, open_timeout=10)
    socket.send(json.dumps({"action": "subscribe", "session_id": session_id}))
    assert json.loads(socket.recv(timeout=10)) == {"type": "subscribed", "session_id": session_id}
    return socket


def events_until(socket, *final: str, timeout: float = 30) -> list[dict]:
    events = []
    while not events or events[-1]["type"] not in final:
        events.append(json.loads(socket.recv(timeout=timeout)))
    return events


def png_bytes(size=(20, 10), color=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the schema -----------------------------------------------------------------------------------


def test_openapi_has_a_schema_for_every_node_including_plugins(http):
    spec = http.get("/openapi.json").json()
    union = spec["components"]["schemas"]["AnyInvocation"]
    node_types = {node["type"] for node in http.get("/api/v1/nodes/").json()}
    assert set(union["discriminator"]["mapping"]) == node_types
    assert {"noise_image", "scale", "show_image", "integer", "collect", "slow_steps"} <= node_types
    assert union["discriminator"]["propertyName"] == "type"
    slow = spec["components"]["schemas"][union["discriminator"]["mapping"]["slow_steps"].rsplit("/", 1)[-1]]
    assert slow["properties"]["steps"]["maximum"] == 1000
    append = spec["paths"]["/api/v1/sessions/{session_id}/nodes"]["post"]["requestBody"]["content"]["application/json"]
    assert spec["components"]["schemas"]["AppendNode"]["properties"]["node"] == {"$ref": "#/components/schemas/AnyInvocation"}
    assert append["schema"] == {"$ref": "#/components/schemas/AppendNode"}
    for page in ("/docs", "/redoc"):
        response = http.get(page)
        assert response.status_code == 200 and "openapi.json" in response.text


def test_node_types_list_inputs_outputs_and_schema(http):
    noise = http.get("/api/v1/nodes/noise_image").json()
    assert noise["inputs"]["width"]["tag"] == "int" and noise["outputs"]["image"]["tag"] == "image"
    assert noise["json_schema"]["properties"]["type"]["const"] == "noise_image"
    missing = http.get("/api/v1/nodes/no_such_node")
    assert missing.status_code == 404 and missing.json()["node_type"] == "no_such_node"


def test_models_lists_what_the_model_manager_found(http):
    body = http.get("/api/v1/models/").json()
    assert body["available"] is True and body["items"] == []  # the test root has no model files
    bad = http.get("/api/v1/models/", params={"kind": "nonsense"})
    assert bad.status_code == 422 and bad.json()["field"] == "kind"


# --- sessions and events --------------------------------------------------------------------------


def test_graph_session_runs_with_events_and_its_image_is_served(http, server):
    session = create(http, NOISE_GRAPH)
    assert [n["id"] for n in session["graph"]["nodes"]] == ["noise", "half", "show"]
    assert session["states"] == {"noise": "pending", "half": "pending", "show": "pending"}
    with subscribe(server, session["id"]) as socket:
        assert http.put(f"/api/v1/sessions/{session['id']}/invoke").status_code == 202
        events = events_until(socket, "session_completed")
    kinds = [(e["type"], e["node_id"]) for e in events]
    assert kinds == [("node_started", "noise"), ("node_completed", "noise"), ("node_started", "half"),
                     ("node_completed", "half"), ("node_started", "show"), ("node_completed", "show"),
                     ("session_completed", None)]
    assert events[-1]["data"] == {"errors": {}, "complete": True}
    output = events[-2]["data"]["outputs"]
    assert (output["width"], output["height"]) == (32, 24)

    name = output["image"]["image_name"]
    full = http.get(f"/api/v1/images/{name}")
    assert full.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(full.content)).size == (32, 24)
    thumb = http.get(f"/api/v1/images/{name}/thumbnail", params={"size": 16})
    assert Image.open(io.BytesIO(thumb.content)).size == (16, 12)
    meta = http.get(f"/api/v1/images/{name}/metadata").json()
    assert meta["session_id"] == session["id"] and meta["node_id"] == "half"  # show_image passes it on
    assert [n["type"] for n in meta["graph"]["nodes"]] == ["noise_image", "scale", "show_image"]
    assert name in http.get("/api/v1/images/", params={"limit": 500}).json()["items"]

    done = _wait_idle(http, session["id"])
    assert done["states"] == {"noise": "completed", "half": "completed", "show": "completed"}
    assert done["history"] == ["noise", "half", "show"]


def test_append_nodes_with_history_and_star_links_then_invoke_next(http, server):
    session_id = create(http)["id"]
    first = http.post(f"/api/v1/sessions/{session_id}/nodes",
                      json={"node": {"type": "noise_image", "width": 16, "height": 16, "seed": 1}})
    assert first.status_code == 201 and first.json()["node"]["id"] == "1"
    star = http.post(f"/api/v1/sessions/{session_id}/nodes",
                     json={"node": {"type": "scale", "factor": 2}, "links": [{"from_node": -1, "from_field": "*"}]}).json()
    assert star["links"] == [{"from_node": "1", "from_field": "image", "to_node": "2", "to_field": "image"}]
    by_id = http.post(f"/api/v1/sessions/{session_id}/nodes",
                      json={"node": {"id": "out", "type": "show_image"},
                            "links": [{"from_node": "2", "from_field": "image", "to_field": "image"}]}).json()
    assert by_id["node"] == {"id": "out", "type": "show_image", "version": "1.0.0"}

    with subscribe(server, session_id) as socket:
        http.put(f"/api/v1/sessions/{session_id}/invoke", params={"all": "false"})
        assert [e["type"] for e in events_until(socket, "node_completed")] == ["node_started", "node_completed"]
    assert _wait_idle(http, session_id)["states"] == {"1": "completed", "2": "pending", "out": "pending"}


def _wait_idle(http, session_id: str) -> dict:
    for _ in range(200):
        body = http.get(f"/api/v1/sessions/{session_id}").json()
        if not body["busy"]:
            return body
        time.sleep(0.05)
    raise AssertionError("session stayed busy")


def _started(server, http, session_id: str) -> list[str]:
    """Invoke and wait for the end: the nodes that really ran."""
    with subscribe(server, session_id) as socket:
        assert http.put(f"/api/v1/sessions/{session_id}/invoke").status_code == 202
        events = events_until(socket, "session_completed")
    return [e["node_id"] for e in events if e["type"] == "node_started"]


def _pixels(http, body: dict, node_id: str) -> bytes:
    name = body["results"][node_id][0]["outputs"]["image"]["image_name"]
    return Image.open(io.BytesIO(http.get(f"/api/v1/images/{name}").content)).convert("RGB").tobytes()


def test_session_stored_where_its_images_are_gone_is_stale_and_invoke_makes_them(http, server, tmp_path):
    sent = create(http, NOISE_GRAPH)
    _started(server, http, sent["id"])
    sent = _wait_idle(http, sent["id"])
    root = tmp_path / "other-machine"
    (root / "sessions").mkdir(parents=True)
    stored = {k: v for k, v in sent.items() if k not in ("states", "busy")}  # the session file, copied over
    (root / "sessions" / f"{sent['id']}.json").write_text(json.dumps(stored))
    with api_server(root) as other, httpx.Client(base_url=other.base_url, timeout=20) as there:
        opened = there.get(f"/api/v1/sessions/{sent['id']}").json()
        assert opened["states"] == {"noise": "stale", "half": "stale", "show": "stale"}
        assert _started(other, there, sent["id"]) == ["noise", "half", "show"]
        ran = _wait_idle(there, sent["id"])
        assert ran["states"] == {"noise": "completed", "half": "completed", "show": "completed"}
        assert _pixels(there, ran, "show") == _pixels(http, sent, "show")  # made here, the same pixels
        # the image deleted through the API: the next invoke makes it again, and what came after it
        gone = ran["results"]["half"][0]["outputs"]["image"]["image_name"]
        assert there.delete(f"/api/v1/images/{gone}").status_code == 200
        assert _started(other, there, sent["id"]) == ["half", "show"]
        again = _wait_idle(there, sent["id"])
        assert again["results"]["show"][0]["outputs"]["image"]["image_name"] != gone
        assert _pixels(there, again, "show") == _pixels(http, sent, "show")
    with api_server(root) as restarted, httpx.Client(base_url=restarted.base_url, timeout=20) as there:
        assert there.get(f"/api/v1/sessions/{sent['id']}").json()["states"] == {"noise": "cached", "half": "cached",
                                                                                 "show": "cached"}
        assert _started(restarted, there, sent["id"]) == []  # its images are here: nothing runs


def test_sessions_are_listed_in_pages_and_deleted(http):
    ids = [create(http)["id"] for _ in range(3)]
    page = http.get("/api/v1/sessions/", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["has_more"] is True
    listed = [item["id"] for item in http.get("/api/v1/sessions/", params={"limit": 200}).json()["items"]]
    assert set(ids) <= set(listed)
    assert http.delete(f"/api/v1/sessions/{ids[0]}").json() == {"deleted": ids[0]}
    assert http.get(f"/api/v1/sessions/{ids[0]}").status_code == 404
    assert http.delete(f"/api/v1/sessions/{ids[0]}").status_code == 404


def test_fork_with_one_change_leaves_the_original_alone(http):
    original = create(http, NOISE_GRAPH)
    sid = original["id"]
    forked = http.post(f"/api/v1/sessions/{sid}/fork",
                       json={"op": "set_value", "node_id": "half", "field": "factor", "value": 2}).json()
    assert forked["parent_id"] == sid and forked["id"] != sid
    assert next(n for n in forked["graph"]["nodes"] if n["id"] == "half")["factor"] == 2
    assert http.get(f"/api/v1/sessions/{sid}").json()["graph"] == original["graph"]

    no_show = http.post(f"/api/v1/sessions/{sid}/fork", json={"op": "delete_node", "node_id": "show"}).json()
    assert [n["id"] for n in no_show["graph"]["nodes"]] == ["noise", "half"]
    link = NOISE_GRAPH["links"][1]
    unlinked = http.post(f"/api/v1/sessions/{sid}/fork", json={"op": "delete_link", "link": link})
    # show_image's image then has neither a value nor a link; forks allow that (the run fails it)
    assert unlinked.status_code == 201 and len(unlinked.json()["graph"]["links"]) == 1
    relinked = http.post(f"/api/v1/sessions/{unlinked.json()['id']}/fork", json={"op": "add_link", "link": link})
    assert relinked.json()["graph"]["links"] == original["graph"]["links"]


# --- bad input ------------------------------------------------------------------------------------

APPEND_ERRORS = [
    # (request body, node_id, field, words in the message)
    ({"node": {"type": "no_such_node"}}, "1", None, "unknown node type"),
    ({"node": {"type": "noise_image", "width": "wide"}}, "1", "width", "integer"),
    ({"node": {"type": "noise_image", "width": 0}}, "1", "width", "greater than or equal"),
    ({"node": {"type": "integer", "colour": 3}}, "1", "colour", "unknown field"),
    ({"node": {"type": "scale"}}, "1", "image", "neither a value nor a link"),
    ({"node": {"type": "scale"}, "links": [{"from_node": "n", "from_field": "value", "to_field": "image"}]},
     "1", "image", "cannot link int output 'n.value' into an image input"),
    ({"node": {"type": "scale"}, "links": [{"from_node": "ghost", "from_field": "image", "to_field": "image"}]},
     "1", None, "unknown node 'ghost'"),
    ({"node": {"type": "scale"}, "links": [{"from_node": -5}]}, "1", None, "before the first node"),
    ({"node": {"id": "n", "type": "integer"}}, "n", None, "already exists"),
]


@pytest.mark.parametrize("body,node_id,field,words", APPEND_ERRORS, ids=[c[3] for c in APPEND_ERRORS])
def test_bad_node_is_422_naming_node_and_field_and_changes_nothing(http, body, node_id, field, words):
    sid = create(http, {"nodes": [{"id": "n", "type": "integer", "value": 2}]})["id"]
    before = http.get(f"/api/v1/sessions/{sid}").json()
    response = http.post(f"/api/v1/sessions/{sid}/nodes", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_graph" and words in error["message"]
    assert error.get("node_id") == node_id and error.get("field") == field
    assert http.get(f"/api/v1/sessions/{sid}").json() == before


@pytest.mark.parametrize("node_id,status", [("¹", 201), ("--5", 201), ("9" * 100, 201), ("9" * 5000, 422), ("-5", 422), ("07", 201)])
def test_numeric_looking_node_ids_never_crash(http, node_id, status):
    # found by the fuzzer: "¹".isdigit() is true and int("¹") fails; int() refuses 5000 digits
    sid = create(http)["id"]
    response = http.post(f"/api/v1/sessions/{sid}/nodes", json={"node": {"id": node_id, "type": "integer"}})
    assert response.status_code == status, response.text
    link = http.post(f"/api/v1/sessions/{sid}/nodes",
                     json={"node": {"type": "math"}, "links": [{"from_node": node_id, "from_field": "value", "to_field": "a"}]})
    assert link.status_code == (201 if status == 201 else 422), link.text


GRAPH_ERRORS = [
    ({"nodes": [{"id": "a", "type": "math", "a": "x"}]}, "a", "a"),
    ({"nodes": [{"id": "a", "type": "integer"}, {"id": "b", "type": "scale"}],
      "links": [{"from_node": "a", "from_field": "value", "to_node": "b", "to_field": "image"}]}, "b", "image"),
    ({"nodes": [{"id": "a", "type": "math"}, {"id": "b", "type": "math"}],
      "links": [{"from_node": "a", "from_field": "value", "to_node": "b", "to_field": "a"},
                {"from_node": "b", "from_field": "value", "to_node": "a", "to_field": "a"}]}, "a", None),
    ({"nodes": [{"id": "a", "type": "integer", "version": "99.0.0"}]}, "a", None),
]


@pytest.mark.parametrize("graph,node_id,field", GRAPH_ERRORS, ids=["value", "link type", "cycle", "newer version"])
def test_bad_graph_is_422_and_creates_no_session(http, graph, node_id, field):
    def session_ids():  # a set: other tests' delayed saves reorder the newest-first list
        return {item["id"] for item in http.get("/api/v1/sessions/", params={"limit": 200}).json()["items"]}

    before = session_ids()
    response = http.post("/api/v1/sessions/", json=graph)
    assert response.status_code == 422, response.text
    assert (response.json().get("node_id"), response.json().get("field")) == (node_id, field)
    assert session_ids() == before


def test_malformed_requests_are_4xx_json(http):
    sid = create(http)["id"]
    cases = [
        http.post("/api/v1/sessions/", content=b'{"nodes": [', headers={"content-type": "application/json"}),
        http.post("/api/v1/sessions/", json={"nodes": 5}),
        http.post(f"/api/v1/sessions/{sid}/nodes", json={"links": []}),
        http.post(f"/api/v1/sessions/{sid}/nodes", json={"node": {"type": "integer"}, "links": [{"from_field": "*"}]}),
        http.post(f"/api/v1/sessions/{sid}/fork", json={"op": "rename"}),
        http.post(f"/api/v1/sessions/{sid}/fork", json={"op": "set_value", "node_id": "x", "field": "f", "value": 1}),
        http.get("/api/v1/sessions/", params={"limit": "many"}),
    ]
    for response in cases:
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] in ("invalid_request", "invalid_graph") and body["message"]
    assert cases[1].json()["field"] == "nodes"
    assert cases[5].json()["node_id"] == "x"
    assert http.get(f"/api/v1/sessions/{sid}").json()["graph"] == {"nodes": [], "links": []}


def listed(http) -> list[dict]:
    """Every session's summary, by id: the list's newest-first order moves when a background
    checkpoint rewrites a file."""
    return sorted(http.get("/api/v1/sessions/", params={"limit": 200}).json()["items"], key=lambda item: item["id"])


@pytest.mark.parametrize("raw,field", [
    (b'{"nodes": [{"id": "a", "type": "float", "value": NaN}]}', "value"),
    (b'{"nodes": [{"id": "a", "type": "float", "value": 1e999}]}', "value"),
    (b'{"nodes": [{"id": "a", "type": "string", "value": "\\ud800"}]}', "value"),
    (b'{"nodes": [{"id": "a", "type": "string", "\\udfff": 1}]}', "0"),
])
def test_json_that_cannot_be_stored_is_422(http, raw, field):
    before = listed(http)
    response = http.post("/api/v1/sessions/", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert listed(http) == before


def test_fork_with_bad_value_names_the_field_and_creates_nothing(http):
    sid = create(http, NOISE_GRAPH)["id"]
    before = listed(http)
    response = http.post(f"/api/v1/sessions/{sid}/fork",
                         json={"op": "set_value", "node_id": "noise", "field": "width", "value": -3})
    assert response.status_code == 422
    assert (response.json()["node_id"], response.json()["field"]) == ("noise", "width")
    assert listed(http) == before


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/v1/sessions/{missing}"), ("DELETE", "/api/v1/sessions/{missing}"),
    ("PUT", "/api/v1/sessions/{missing}/invoke"), ("DELETE", "/api/v1/sessions/{missing}/invoke"),
    ("GET", "/api/v1/images/{missing}.png"),
    ("GET", "/api/v1/images/{missing}.png/thumbnail"), ("GET", "/api/v1/images/{missing}.png/metadata"),
    ("DELETE", "/api/v1/images/{missing}.png"),
])
def test_unknown_session_or_image_is_404_json(http, method, path):
    response = http.request(method, path.format(missing="0" * 32))
    assert response.status_code == 404 and response.json()["error"] in ("session_not_found", "image_not_found", "not_found")


@pytest.mark.parametrize("path,field", [
    ("/api/v1/sessions/a.b", "session_id"), ("/api/v1/sessions/" + "é" * 300, "session_id"),
    ("/api/v1/images/..png", "image_name"), ("/api/v1/images/" + "a" * 300 + ".png/metadata", "image_name"),
])
def test_malformed_ids_are_422_before_they_reach_the_disk(http, path, field):
    response = http.get(path)
    assert response.status_code == 422 and response.json()["field"] == field


def test_append_to_unknown_session_is_404(http):
    response = http.post("/api/v1/sessions/nope/nodes", json={"node": {"type": "integer"}})
    assert response.status_code == 404 and response.json()["error"] == "session_not_found"


# --- uploads --------------------------------------------------------------------------------------


def test_upload_round_trips_pixels(http):
    response = http.post("/api/v1/images/", files={"file": ("x.png", png_bytes(), "image/png")})
    assert response.status_code == 201, response.text
    info = response.json()
    assert (info["width"], info["height"]) == (20, 10)
    back = Image.open(io.BytesIO(http.get(f"/api/v1/images/{info['image_name']}").content))
    assert back.getpixel((3, 3)) == (10, 200, 30)
    assert http.get(f"/api/v1/images/{info['image_name']}/metadata").json()["graph"] is None
    assert http.delete(f"/api/v1/images/{info['image_name']}").status_code == 200
    assert http.get(f"/api/v1/images/{info['image_name']}").status_code == 404


def test_non_image_and_oversize_uploads_are_refused(http):
    text = http.post("/api/v1/images/", files={"file": ("x.png", b"not an image at all", "image/png")})
    assert text.status_code == 415 and text.json()["field"] == "file"
    truncated = http.post("/api/v1/images/", files={"file": ("x.png", png_bytes()[:40], "image/png")})
    assert truncated.status_code == 415
    big = b"\0" * (2 * 2**20)  # the test server allows 1 MiB
    declared = http.post("/api/v1/images/", files={"file": ("big.png", big, "image/png")})
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"
    multipart = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                 b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--xyz--\r\n")
    chunked = http.post("/api/v1/images/", content=(multipart[i:i + 65536] for i in range(0, len(multipart), 65536)),
                        headers={"content-type": "multipart/form-data; boundary=xyz"})  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["error"] == "too_large"
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")  # tiny file, 400 megapixels decoded
    assert http.post("/api/v1/images/", files={"file": ("bomb.png", bomb.getvalue(), "image/png")}).status_code == 413
    missing = http.post("/api/v1/images/", files={"other": ("x.png", png_bytes(), "image/png")})
    assert missing.status_code == 422 and missing.json()["field"] == "file"


# --- the socket -----------------------------------------------------------------------------------


def test_progress_has_a_preview_and_cancel_stops_the_run(http, server):
    sid = create(http, {"nodes": [{"id": "slow", "type": "slow_steps", "steps": 400, "delay": 0.02},
                                  {"id": "after", "type": "integer", "value": 1}],
                        "links": []})["id"]
    with subscribe(server, sid) as socket:
        http.put(f"/api/v1/sessions/{sid}/invoke")
        progress = events_until(socket, "node_progress")[-1]
        assert progress["node_id"] == "slow" and progress["data"]["total"] == 400
        preview = progress["data"]["preview"]
        assert preview.startswith("data:image/png;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))).size == (256, 171)
        assert http.delete(f"/api/v1/sessions/{sid}/invoke").status_code == 202
        tail = events_until(socket, "session_canceled", timeout=10)
    failed = [e for e in tail if e["type"] == "node_failed"]
    assert failed and failed[0]["data"]["state"] == "canceled"
    states = _wait_idle(http, sid)["states"]
    assert states == {"slow": "canceled", "after": "pending"}


def test_socket_protocol_errors_and_unsubscribe(server, http):
    sid = create(http)["id"]
    with connect(server.ws_url) as socket:
        for message, words in ((b"\x00binary", "text frames"), ("hello", "not JSON"), ("[1]", "JSON object"), ('{"action": "shout"}', "unknown action"),
                               ('{"action": "subscribe"}', "session_id"),
                               ('{"action": "subscribe", "session_id": "nope"}', "no session"),
                               ("[" * 20_000 + "]" * 20_000, "nested deeper than 4 levels"),
                               ('{"action": "' + "x" * 70_000 + '"}', "too large")):
            socket.send(message)
            reply = json.loads(socket.recv(timeout=5))
            assert reply["type"] == "error" and words in reply["message"]
        socket.send(json.dumps({"action": "subscribe", "session_id": sid}))
        assert json.loads(socket.recv(timeout=5))["type"] == "subscribed"
        socket.send(json.dumps({"action": "unsubscribe", "session_id": sid}))
        assert json.loads(socket.recv(timeout=5)) == {"type": "unsubscribed", "session_id": sid}
        http.post(f"/api/v1/sessions/{sid}/nodes", json={"node": {"type": "integer", "value": 9}})
        http.put(f"/api/v1/sessions/{sid}/invoke")
        _wait_idle(http, sid)
        with pytest.raises(TimeoutError):
            socket.recv(timeout=0.3)  # unsubscribed: the run's events do not come


def test_two_sockets_each_get_the_events_of_their_session(http, server):
    a, b = create(http, {"nodes": [{"id": "x", "type": "integer", "value": 101}]})["id"], create(http)["id"]
    with subscribe(server, a) as first, subscribe(server, a) as second, subscribe(server, b) as other:
        http.put(f"/api/v1/sessions/{a}/invoke")
        for socket in (first, second):
            assert [e["type"] for e in events_until(socket, "session_completed")] == [
                "node_started", "node_completed", "session_completed"]
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.3)


def test_a_client_that_does_not_read_is_disconnected_not_buffered():
    class StuckSocket:  # takes frames only once the queue overflowed, like a client that stopped reading
        def __init__(self):
            self.sent, self.closed = [], None

        async def send_text(self, text):
            self.sent.append(text)

        async def close(self, code, reason=""):
            self.closed = code

    async def scenario():
        socket = StuckSocket()
        conn = Connection(socket)
        for n in range(QUEUE_LIMIT + 5):
            conn.push(json.dumps({"n": n}))
        assert conn.closing and conn.queue.qsize() == 1
        await asyncio.wait_for(conn.pump(), 5)
        return socket

    socket = asyncio.run(scenario())
    assert socket.closed == 1013 and socket.sent == []


def test_a_failed_journal_write_refuses_the_append_and_leaves_the_session(invoker, monkeypatch):
    import errno

    from services.stores import journal

    writer = DurableAppends(invoker, interval=60)  # checkpoints only at close
    append = lambda *args: asyncio.run(writer.append(*args))  # noqa: E731 - the route awaits it on the server's loop
    try:
        session = invoker.create_session()
        append(session, {"type": "integer", "value": 1}, [])

        def full_disk(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(journal, "write_all", full_disk)
        with pytest.raises(ApiError) as refused:
            append(session, {"type": "integer", "value": 2}, [("-1", "value", "value")])
        assert refused.value.status == 507 and "No space left on device" in refused.value.body["message"]
        assert [n.values["value"] for n in session.graph.nodes.values()] == [1] and len(session.graph.links) == 0
        monkeypatch.undo()
        append(session, {"type": "integer", "value": 3}, [])
    finally:
        writer.close()
    saved = json.loads((invoker.services.sessions.folder / f"{session.id}.json").read_text())
    assert [n["value"] for n in saved["graph"]["nodes"]] == [1, 3]


def test_concurrent_appends_to_one_session_take_turns(invoker):
    writer = DurableAppends(invoker, interval=60)
    session = invoker.create_session()

    async def burst():
        return await asyncio.gather(*(writer.append(session, {"type": "integer", "value": v}, []) for v in range(30)))

    try:
        added = asyncio.run(burst())
        assert sorted(n.values["value"] for n in added) == list(range(30)) and not writer._turns
    finally:
        writer.close()
    saved = json.loads((invoker.services.sessions.folder / f"{session.id}.json").read_text())
    assert [n["id"] for n in saved["graph"]["nodes"]] == [n.id for n in added]  # in the order they were appended


def test_journal_records_that_arrive_together_share_one_fdatasync(tmp_path, monkeypatch):
    from services.stores import journal

    syncs = []

    def slow_sync(fd):  # a slow disk: records arriving during a flush queue up for the next one
        syncs.append(fd)
        time.sleep(0.01)

    monkeypatch.setattr(journal, "_datasync", slow_sync)
    log = journal.Journal(tmp_path)
    threads = [threading.Thread(target=lambda n=n: [log.append({"n": n, "i": i}) for i in range(10)]) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    records = list(log.records(log.segments()))
    assert sorted((r["n"], r["i"]) for r in records) == [(n, i) for n in range(20) for i in range(10)]
    assert len(syncs) < 200 / 4  # 200 records, far fewer flushes
    for n in range(20):  # each writer's records stay in its order
        assert [r["i"] for r in records if r["n"] == n] == list(range(10))


# --- the server process ---------------------------------------------------------------------------


def test_server_process_loads_neither_torch_nor_dearpygui(server, http):
    sid = create(http, NOISE_GRAPH)["id"]
    http.put(f"/api/v1/sessions/{sid}/invoke")
    _wait_idle(http, sid)
    http.get("/api/v1/models/")
    maps = Path(f"/proc/{server.pid}/maps")
    if not maps.exists():
        pytest.skip("no /proc on this system")
    libraries = maps.read_text()
    assert "libtorch" not in libraries and "dearpygui" not in libraries
    assert "_pydantic_core" in libraries  # the check itself sees the server's extension modules


def test_token_is_required_on_every_request_and_socket(tmp_path):
    with api_server(tmp_path / "root", token="s3cret") as server, httpx.Client(base_url=server.base_url) as http:
        for path in ("/api/v1/sessions/", "/openapi.json", "/docs", "/static/test.html"):
            response = http.get(path)
            assert response.status_code == 401 and response.json()["error"] == "unauthorized"
        assert http.get("/api/v1/sessions/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        sid = http.post("/api/v1/sessions/", headers={"Authorization": "Bearer s3cret"}).json()["id"]
        with pytest.raises(InvalidStatus) as refused:
            subscribe(server, sid)
        assert refused.value.response.status_code == 403  # the handshake is refused before any message
        subscribe(server, sid, "?token=s3cret").close()
        docs = http.get("/docs", params={"token": "s3cret"})  # a browser given the token once keeps it
        assert docs.status_code == 200 and "invoke_nodes_token" in docs.headers["set-cookie"]
        spec = http.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["security"] == [{"token": []}]


def test_every_acknowledged_append_survives_sigkill(tmp_path):
    """A burst of appends from concurrent clients, SIGKILL right after the last answer, a restart
    on the same folder: every node that was answered 201 is there."""
    root = tmp_path / "root"
    acknowledged: dict[str, list[int]] = {}

    async def burst(base_url):
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
            ids = [(await client.post("/api/v1/sessions/")).json()["id"] for _ in range(20)]

            async def one_client(sid):
                acknowledged[sid] = []
                for value in range(10):
                    response = await client.post(f"/api/v1/sessions/{sid}/nodes", json={"node": {"type": "integer", "value": value}})
                    assert response.status_code == 201, response.text
                    acknowledged[sid].append(value)

            await asyncio.gather(*(one_client(sid) for sid in ids))

    with api_server(root) as server:
        asyncio.run(burst(server.base_url))
        server.process.kill()  # SIGKILL: no shutdown, no checkpoint
        server.process.wait(10)
        stale = [json.loads((root / "sessions" / f"{sid}.json").read_text())["graph"]["nodes"] for sid in acknowledged]
    assert sum(len(nodes) for nodes in stale) < 200  # the files alone did not have them: the journal did
    with api_server(root) as server, httpx.Client(base_url=server.base_url) as http:
        for sid, values in acknowledged.items():
            nodes = http.get(f"/api/v1/sessions/{sid}").json()["graph"]["nodes"]
            assert [n["value"] for n in nodes] == values == list(range(10))
            on_disk = json.loads((root / "sessions" / f"{sid}.json").read_text())["graph"]["nodes"]
            assert [n["value"] for n in on_disk] == values  # replayed into the session file at start
        http.post(f"/api/v1/sessions/{sid}/nodes", json={"node": {"type": "integer", "value": 10}})
    on_disk = json.loads((root / "sessions" / f"{sid}.json").read_text())["graph"]["nodes"]
    assert [n["value"] for n in on_disk] == list(range(11))  # a clean stop checkpoints
    assert all(not p.read_bytes().strip(b"\0\n") for p in (root / "sessions" / "journal").iterdir())  # and empties the journal


def test_loopback_server_refuses_other_host_names(http):
    assert http.get("/api/v1/health", headers={"host": "evil.example:9090"}).status_code == 400
    assert http.get("/api/v1/health", headers={"host": "localhost:9090"}).status_code == 200


def test_token_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("INVOKE_NODES_TOKEN", "from-env")
    assert parse_args([]).token == "from-env" and parse_args(["--token", "given"]).token == "given"
    monkeypatch.delenv("INVOKE_NODES_TOKEN")
    assert parse_args([]).token is None and parse_args([]).host == "127.0.0.1" and parse_args([]).port == 9090


def test_binding_beyond_loopback_without_token_warns():
    assert startup_warning("127.0.0.1", None) is None and startup_warning("::1", None) is None
    assert "no authentication" in startup_warning("0.0.0.0", None)
    assert startup_warning("0.0.0.0", "t") is None
