"""Schemathesis against the API's own OpenAPI document, over HTTP to a real server.

Every operation gets a bounded number of generated requests (valid and invalid by the schema);
none may answer 5xx, and every answer must match the documented status codes, content types and
response schemas.  Some requests go to a session and an image that exist, so that the session
routes get past 404.
"""
from __future__ import annotations

import io
import os
import itertools

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from app.api.launch import api_server

# Per operation and mode: ~18 operations, so the file takes seconds; raise it for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "12"))

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(tmp_path_factory.mktemp("fuzz-root")) as running:
        yield running


@pytest.fixture(scope="module")
def known(server):
    """Path parameters that exist, so that the routes get past 404.

    Two sessions: generated nodes are appended to one and only the other is invoked, so the fuzzer
    never runs arbitrary nodes (a save_image into a generated folder, a 16384 x 16384 image).
    """
    with httpx.Client(base_url=server.base_url) as http:
        graph = {"nodes": [{"id": "1", "type": "integer", "value": 3}]}
        grown, invoked = (http.post("/api/v1/sessions/", json=graph).json()["id"] for _ in range(2))
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG")
        image = http.post("/api/v1/images/", files={"file": ("a.png", buffer.getvalue(), "image/png")}).json()
    return {"grown": grown, "invoked": invoked, "image_name": image["image_name"], "node_type": "integer"}


def existing(operation, known: dict, name: str) -> str | None:
    if name == "session_id":
        return known["invoked"] if operation.path.endswith("/invoke") else known["grown"]
    return known.get(name)


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.base_url + "/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_api_conforms_to_its_schema_and_never_fails_with_5xx(api_schema, known, mode):
    failures: list[str] = []
    turn = itertools.count()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode == GenerationMode.NEGATIVE and not _has_inputs_to_break(operation.definition.raw):
            continue  # a path string cannot be made schema-invalid: hypothesis would only give up slowly
        # Deleting the known session or image would leave the later operations only 404s.
        deletes_target = operation.method.upper() == "DELETE" and operation.path.endswith("}")

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            # Half the examples target the existing session / image: deep paths, not only 404s.
            if case.path_parameters and not deletes_target and next(turn) % 2 == 0:
                for name in case.path_parameters:
                    case.path_parameters[name] = existing(operation, known, name) or case.path_parameters[name]
            case.call_and_validate(checks=CHECKS)

        try:
            call()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises groups; collect every operation's
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def _has_inputs_to_break(definition: dict) -> bool:
    return "requestBody" in definition or any(p.get("in") == "query" for p in definition.get("parameters", ()))
