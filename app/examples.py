"""Example graphs shipped with the app (assets/examples/*.json), opened from the canvas's File -> Examples.

Model fields are left empty: the user picks their own models in the opened graph.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "examples"


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    description: str
    graph: dict[str, Any]  # {"nodes": [...], "links": [...]}, as Graph.from_dict reads it


def examples() -> list[Example]:
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        found.append(Example(path.stem, data["title"], data["description"], data["graph"]))
    return found


def example(name: str) -> Example:
    for item in examples():
        if item.name == name:
            return item
    raise KeyError(f"no example '{name}' (known: {', '.join(e.name for e in examples())})")
