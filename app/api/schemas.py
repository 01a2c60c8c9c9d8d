"""Request and response models, and the OpenAPI schemas of the invocations.

The node schemas are generated from ``nodes.base.REGISTRY`` when the app is built, so a new node
(built-in or plugin) appears in /docs and in every request that takes a node with no API code.

Request bodies carry nodes as plain objects that the engine validates, not FastAPI: an input
given by a link needs no value, which a per-node pydantic body could not express, and the
engine's GraphError names the node and the field.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import models_json_schema

from nodes.base import REGISTRY

COMPONENTS = "#/components/schemas/"

# Ids as the stores make them.  Checked before a store sees them: a long or exotic name would
# otherwise reach the file system (ENAMETOOLONG is an OSError, not "not found").
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
IMAGE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
SessionId = Annotated[str, Path(pattern=f"^{SESSION_ID_RE.pattern}$", description="A session id")]
ImageName = Annotated[str, Path(pattern=f"^{IMAGE_NAME_RE.pattern}$", description="An image name, e.g. 0a1b....png")]
ANY_INVOCATION = "AnyInvocation"

# A placeholder: pydantic cannot emit a $ref to a schema it did not generate, so app.openapi()
# replaces it with the reference to AnyInvocation (see link_node_schemas).
NODE_PLACEHOLDER = "x-invoke-node"
NodeBody = Annotated[dict[str, Any], WithJsonSchema({"type": "object", NODE_PLACEHOLDER: True})]


def link_node_schemas(schema: Any) -> Any:
    """Replace every node placeholder in an OpenAPI document with the AnyInvocation reference."""
    if isinstance(schema, dict):
        if schema.get(NODE_PLACEHOLDER):
            return {"$ref": COMPONENTS + ANY_INVOCATION}
        return {key: link_node_schemas(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [link_node_schemas(value) for value in schema]
    return schema


def invocation_components() -> dict[str, Any]:
    """OpenAPI component schemas: one per node type and AnyInvocation, their union on `type`."""
    classes = sorted(REGISTRY.values(), key=lambda cls: cls.node_type)
    refs, top = models_json_schema([(cls, "validation") for cls in classes], ref_template=COMPONENTS + "{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    mapping: dict[str, str] = {}
    for cls in classes:
        ref = refs[(cls, "validation")]["$ref"]
        schema = defs[ref.removeprefix(COMPONENTS)]
        # Any input may come from a link instead of a value, so only `type` is required here; the
        # engine checks that each required input has one or the other (422 naming the field).
        schema["required"] = ["type"]
        schema["properties"]["version"] = {
            "type": "string", "title": "Version",
            "description": "Version of the node that wrote a saved graph; older values are migrated"}
        mapping[cls.node_type] = ref
    defs[ANY_INVOCATION] = {
        "title": ANY_INVOCATION,
        "description": "A node: `type` picks the invocation, the other properties are its input values.",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return defs


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- graphs and sessions ------------------------------------------------------------------------


class LinkModel(Strict):
    from_node: str
    from_field: str
    to_node: str
    to_field: str


class GraphModel(Strict):
    nodes: list[NodeBody] = Field(default_factory=list, description="Each node needs an `id` here")
    links: list[LinkModel] = Field(default_factory=list)


class HistoryLink(Strict):
    from_node: str | int = Field(description="An existing node id, or -1 for the node added last, -2 before it, ...")
    from_field: str = Field("*", description="An output of that node; `*` links every output to the input of the same name and a compatible type")
    to_field: str | None = Field(None, description="The input it feeds (default: the same name as from_field)")


class AppendNode(Strict):
    node: NodeBody
    links: list[HistoryLink] = Field(default_factory=list)


class NodeAdded(BaseModel):
    session_id: str
    node: NodeBody
    links: list[LinkModel]


class SetValue(Strict):
    op: Literal["set_value"]
    node_id: str
    field: str
    value: Any = Field(None, description="The new value; null removes it (the default or a link applies)")


class DeleteNode(Strict):
    op: Literal["delete_node"]
    node_id: str


class AddLink(Strict):
    op: Literal["add_link"]
    link: LinkModel


class DeleteLink(Strict):
    op: Literal["delete_link"]
    link: LinkModel


ForkChange = Annotated[Union[SetValue, DeleteNode, AddLink, DeleteLink], Field(discriminator="op")]


class SessionModel(BaseModel):
    format: str
    schema_version: int
    id: str
    parent_id: str | None
    change: str | None
    created: float
    graph: GraphModel
    results: dict[str, list[dict[str, Any]]]
    history: list[str]
    ui: dict[str, Any]
    states: dict[str, str] = Field(description="Node id -> pending | queued | running | completed | cached | failed | skipped | canceled | stale (its images are gone: the next run redoes it)")
    busy: bool = Field(description="A run of this session is queued or running")


class ImportReportModel(BaseModel):
    format: str = Field(description="comfyui-api | comfyui-workflow | a1111 | invokeai-workflow | invokeai-graph")
    source: str
    total: int = Field(description="Nodes (A1111: settings) in the source")
    unit: str
    imported: list[str] = Field(description="The source's nodes (or settings) carried over")
    unmapped: list[dict[str, str]] = Field(description="What was not carried over: id, type, reason")
    models: list[dict[str, Any]] = Field(description="Model references: kind, reference, model_id (null: missing here)")
    notes: list[str] = Field(description="Approximations and settings not carried over")
    summary: str = Field(description="The report in words, as the canvas shows it")


class ImportedSession(BaseModel):
    session: SessionModel
    report: ImportReportModel


class SessionSummary(BaseModel):
    id: str
    parent_id: str | None = None
    change: str | None = None
    created: float | None = None
    nodes: int | None = None
    error: str | None = Field(None, description="Why the stored session cannot be read")


class Page(BaseModel):
    offset: int
    limit: int
    has_more: bool


class SessionPage(Page):
    items: list[SessionSummary]


class Queued(BaseModel):
    session_id: str
    run_all: bool


class Canceled(BaseModel):
    session_id: str


class Deleted(BaseModel):
    deleted: str


# --- images, nodes, models --------------------------------------------------------------------


class ImageInfo(BaseModel):
    image_name: str
    width: int
    height: int


class ImagePage(Page):
    items: list[str]


class ImageMetadata(BaseModel):
    image_name: str
    session_id: str | None = None
    node_id: str | None = None
    graph: dict[str, Any] | None = Field(None, description="The graph of the session that made the image; null for uploads")


class NodeInfo(BaseModel):
    type: str
    title: str
    description: str
    category: str
    version: str
    tags: list[str]
    fans_out: bool
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    json_schema: dict[str, Any] = Field(description="JSON schema of the node's values")


class UnrecognizedModelFile(BaseModel):
    path: str
    reason: str


class ModelList(BaseModel):
    available: bool = Field(description="False when the model manager could not be loaded")
    error: str | None = None
    items: list[Any]
    unrecognized: list[UnrecognizedModelFile] = Field(default_factory=list,
                                                      description="Files in the models folders that are not models, and why")


class ClusterInfo(BaseModel):
    executor: str = Field(description="Where generation nodes run: in-process, worker or ray")
    workers: list[dict[str, Any]] = Field(description="The Ray workers (none for the other executors): id, node, "
                                                       "device, models it holds, running (what it runs now), state")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    nodes: int


class ErrorBody(BaseModel):
    """Every 4xx answer: `error` is a short code, `message` says what and where."""

    error: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    field: str | None = None
    reason: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Each problem pydantic found in the request")
