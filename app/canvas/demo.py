"""The graph a first run opens: utility nodes only, so it runs on any CPU with nothing downloaded
and shows the whole loop (edit a value -> Run -> the preview changes) in seconds."""
from __future__ import annotations

from typing import Any

DEMO_NODES: list[dict[str, Any]] = [
    {"id": "size", "type": "integer", "value": 256},
    {"id": "noise", "type": "noise_image", "height": 256, "scale": 32, "seed": 1234},
    {"id": "color", "type": "solid_color", "height": 256, "color": "#2a6fdb"},
    {"id": "blend", "type": "blend", "alpha": 0.55, "mode": "screen"},
    {"id": "show", "type": "show_image"},
]
DEMO_LINKS: list[dict[str, str]] = [
    {"from_node": "size", "from_field": "value", "to_node": "noise", "to_field": "width"},
    {"from_node": "size", "from_field": "value", "to_node": "color", "to_field": "width"},
    {"from_node": "noise", "from_field": "image", "to_node": "blend", "to_field": "base"},
    {"from_node": "color", "from_field": "image", "to_node": "blend", "to_field": "top"},
    {"from_node": "blend", "from_field": "image", "to_node": "show", "to_field": "image"},
]
DEMO_POSITIONS: dict[str, list[int]] = {
    "size": [10, 130], "noise": [235, 10], "color": [455, 300], "blend": [695, 40], "show": [960, 60],
}


def demo_graph() -> dict[str, Any]:
    return {"nodes": [dict(n) for n in DEMO_NODES], "links": [dict(l) for l in DEMO_LINKS]}


def demo_positions() -> dict[str, list[int]]:
    return {k: list(v) for k, v in DEMO_POSITIONS.items()}
