"""What the engine offers: node types with their schemas, and the models the model manager found."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import APIRouter, Depends, Query

from nodes.base import REGISTRY, BaseInvocation

from .errors import ApiError
from .schemas import ClusterInfo, ModelList, NodeInfo
from .sessions import get_invoker

router = APIRouter(prefix="/api/v1", tags=["catalog"])
log = logging.getLogger(__name__)


def node_info(cls: type[BaseInvocation]) -> dict[str, Any]:
    return {**cls.template(), "json_schema": cls.model_json_schema()}


@router.get("/nodes/", response_model=list[NodeInfo], summary="Every node type: inputs, outputs, JSON schema")
@router.get("/nodes", response_model=list[NodeInfo], include_in_schema=False)  # no 307 to "/nodes/"
def list_nodes() -> list[dict[str, Any]]:
    return [node_info(REGISTRY[name]) for name in sorted(REGISTRY)]


@router.get("/nodes/{node_type}", response_model=NodeInfo, summary="One node type")
def get_node(node_type: str) -> dict[str, Any]:
    cls = REGISTRY.get(node_type)
    if cls is None:
        raise ApiError(404, "unknown_node_type", f"unknown node type {node_type!r}", node_type=node_type)
    return node_info(cls)


@router.get("/models/", response_model=ModelList, summary="Models the model manager found, and the files it did not recognise")
@router.get("/models", response_model=ModelList, include_in_schema=False)  # no 307 to "/models/"
def list_models(kind: str | None = Query(None, description="main, vae, upscaler, face_restore, ..."),
                invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    try:
        items = invoker.list_models(kind)
        unrecognized = [{"path": u.path, "reason": u.reason} for u in invoker.unrecognized_models()]
    except ImportError as exc:  # the model manager is optional at this layer: report, don't fail
        log.warning("model manager unavailable: %s", exc)
        return {"available": False, "error": f"model manager unavailable: {exc}", "items": []}
    except ValueError as exc:  # an unknown kind
        raise ApiError(422, "invalid_request", str(exc), field="kind") from None
    return {"available": True, "items": [_jsonable(item) for item in items], "unrecognized": unrecognized}


@router.get("/cluster", response_model=ClusterInfo, summary="Where nodes run: the cluster's workers and what each runs")
def cluster(invoker: Any = Depends(get_invoker)) -> dict[str, Any]:
    return invoker.cluster()


def _jsonable(item: Any) -> Any:
    """Model records as JSON, whatever shape the model manager uses for them."""
    if hasattr(item, "to_dict"):
        return item.to_dict()
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json")
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(item).items()}
    if isinstance(item, dict):
        return {str(k): _jsonable(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return [_jsonable(v) for v in item]
    if item is None or isinstance(item, (str, int, float, bool)):
        return item
    return str(item)  # paths, enums
