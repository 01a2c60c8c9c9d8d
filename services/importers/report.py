"""What every importer shares: the import report, the local model catalog (names and hashes), and
the builder that turns mapped nodes into one of our graphs, dropping (and reporting) what does not
validate instead of failing the whole import.  Pure data: no torch, safe in the canvas process."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from nodes.base import REGISTRY
from services.engine.graph import Graph, GraphError


class ImportFormatError(ValueError):
    """A file that cannot be imported; the message names the file and the reason."""


@dataclass
class ImportReport:
    format: str
    source: str
    total: int = 0  # nodes (or settings groups, for A1111) in the source
    imported: list[str] = field(default_factory=list)  # source nodes mapped, as "id (type)"
    unmapped: list[dict[str, str]] = field(default_factory=list)  # {"id", "type", "reason"}
    models: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "reference", "model_id" (None: missing)}
    notes: list[str] = field(default_factory=list)  # approximations, settings not carried over
    unit: str = "nodes"  # what total counts ("settings" for A1111 parameters)

    def unmapped_node(self, node_id: str, node_type: str, reason: str) -> None:
        self.unmapped.append({"id": str(node_id), "type": str(node_type), "reason": reason})

    @property
    def missing_models(self) -> list[dict[str, Any]]:
        return [m for m in self.models if m["model_id"] is None]

    def summary(self) -> str:
        """One paragraph for the user, before running."""
        parts = [f"{len(self.imported)} of {self.total} {self.unit} imported from {self.source} ({self.format})"]
        if self.unmapped:
            parts.append("not imported: " + "; ".join(f"{u['type']} #{u['id']} ({u['reason']})" for u in self.unmapped))
        found = [m for m in self.models if m["model_id"] is not None]
        if found:
            parts.append("models: " + ", ".join(f"{m['reference']} -> {m['model_id']}" for m in found))
        if self.missing_models:
            parts.append("missing models: " + ", ".join(f"{m['reference']} ({m['kind']})" for m in self.missing_models))
        parts.extend(self.notes)
        return ".\n".join(parts) + "."

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "source": self.source, "total": self.total, "imported": list(self.imported),
                "unmapped": list(self.unmapped), "models": list(self.models), "notes": list(self.notes),
                "unit": self.unit, "summary": self.summary()}


@dataclass
class ImportResult:
    graph: Graph
    ui: dict[str, Any]
    report: ImportReport


# --- models ------------------------------------------------------------------------------------

_WEIGHT_SUFFIX = re.compile(r"\.(safetensors|ckpt|pt|pth|bin)$", re.IGNORECASE)
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")  # A1111 writes "name [hash]"


def model_key(reference: str) -> str:
    """A model reference reduced to what names match on: the file name, no folder, extension or hash."""
    name = _HASH_SUFFIX.sub("", reference.strip()).replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "-", _WEIGHT_SUFFIX.sub("", name).lower()).strip("-")


class ModelCatalog:
    """The local models, matched by name, then by hash (hashes are asked only when a name fails)."""

    def __init__(self, models: Iterable[Any], hashes: Callable[[str], dict[str, str]] | None = None) -> None:
        self.models = list(models)  # ModelInfo (id, name, kind, base, path, variant)
        self._hashes = hashes

    def find(self, kind: str, reference: str = "", hashes: Iterable[str] = (), sole: bool = False) -> Any | None:
        """sole: when nothing matches, the only local model of that kind (if there is just one)."""
        candidates = [m for m in self.models if m.kind == kind]
        if sole:
            return self.find(kind, reference, hashes) or (candidates[0] if len(candidates) == 1 else None)
        key = model_key(reference) if reference else ""
        if key:
            for model in candidates:
                if key in (model_key(model.name), model_key(model.id)):
                    return model
            for model in candidates:  # "loras-foo" is the id of loras/foo.safetensors
                if model_key(model.id).endswith("-" + key):
                    return model
        wanted = [h.lower() for h in hashes if h and re.fullmatch(r"[0-9a-fA-F]{8,64}", h)]
        if wanted and self._hashes is not None:
            for model in candidates:
                if Path(model.path).is_dir():
                    continue  # a diffusers folder has no single-file hash
                try:
                    known = self._hashes(model.path)
                except OSError:
                    continue
                if any(known["sha256"].startswith(h) or h in (known.get("autov1"), known.get("addnet", "")[:len(h)])
                       for h in wanted):
                    return model
        return None

    def match(self, report: ImportReport, kind: str, reference: str, hashes: Iterable[str] = (),
              sole: bool = False) -> Any | None:
        """find() and record it in the report (found or missing)."""
        model = self.find(kind, reference, hashes, sole)
        shown = reference or next(iter(hashes), "?")
        if not any(m["reference"] == shown and m["kind"] == kind for m in report.models):
            report.models.append({"kind": kind, "reference": shown, "model_id": model.id if model else None})
        return model


# control model kind -> (loader node, its output pin, apply node)
CONTROLS = {"controlnet": ("controlnet_loader", "control_model", "controlnet_apply"),
            "t2i_adapter": ("t2i_adapter_loader", "t2i_adapter", "t2i_adapter_apply")}


def control_kind(catalog: ModelCatalog, reference: str, hashes: Iterable[str] = ()) -> str:
    """"controlnet" or "t2i_adapter": ComfyUI and A1111 load both the same way, so the local file's
    kind decides (a missing file: its name)."""
    hashes = list(hashes)
    found = next((k for k in ("controlnet", "t2i_adapter") if catalog.find(k, reference, hashes) is not None), None)
    return found or ("t2i_adapter" if "t2i" in model_key(reference) else "controlnet")


def model_value(model: Any | None, reference: str) -> str:
    """The value for a model field: the local id, or the source's name (the run then says it is missing)."""
    return model.id if model is not None else model_key(reference) or reference


# --- samplers ----------------------------------------------------------------------------------

# The schedules each sampler has beside "normal" (README, Samplers): an unsupported pair falls back.
_SCHEDULES = {
    **dict.fromkeys(("euler", "heun", "lms", "dpm_2", "dpm_2_a", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc"),
                    {"karras", "exponential", "sgm_uniform"}),
    "euler_a": {"sgm_uniform"}, "dpmpp_2s_a": {"karras", "exponential"}, "dpmpp_sde": {"karras", "exponential"},
    **dict.fromkeys(("ddim", "ddpm", "pndm", "lcm"), {"sgm_uniform"}),
}


def sampler_values(report: ImportReport, sampler: str | None, schedule: str, source: str) -> dict[str, str]:
    """{"sampler", "schedule"} for denoise_latents; what has no equivalent is noted in the report."""
    if sampler is None:
        report.notes.append(f"sampler {source!r} has no equivalent here: euler is used")
        sampler = "euler"
    if schedule != "normal" and schedule not in _SCHEDULES[sampler]:
        report.notes.append(f"{source!r}: sampler {sampler} has no {schedule} schedule here: normal is used")
        schedule = "normal"
    return {"sampler": sampler, "schedule": schedule}


# --- building ----------------------------------------------------------------------------------

@dataclass
class _Node:
    id: str
    type: str
    values: dict[str, Any]
    source: str  # "id (type)" of the source node it came from


class GraphBuilder:
    """Collects our nodes and links; finish() validates, dropping what does not (reported)."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        self.nodes: dict[str, _Node] = {}
        self.links: list[tuple[str, str, str, str]] = []
        self.positions: dict[str, list[float]] = {}
        self._near: dict[str, int] = {}

    def add(self, node_type: str, values: dict[str, Any], node_id: str, source: str,
            pos: Iterable[float] | None = None) -> str:
        node_id = self._unique(node_id)
        self.nodes[node_id] = _Node(node_id, node_type, {k: v for k, v in values.items() if v is not None}, source)
        if pos is not None:
            x, y = list(pos)[:2]
            k = self._near[source] = self._near.get(source, -1) + 1  # helper nodes of one source node step aside
            self.positions[node_id] = [float(x) + 30.0 * k, float(y) + 90.0 * k]
        return node_id

    def link(self, from_node: str, from_field: str, to_node: str, to_field: str) -> None:
        self.links.append((from_node, from_field, to_node, to_field))

    def _unique(self, node_id: str) -> str:
        node_id = re.sub(r"[/\\\s]+", "_", str(node_id))[:100] or "node"
        if node_id.lstrip("-").isdigit() and node_id.startswith("-"):
            node_id = "n" + node_id
        candidate, n = node_id, 2
        while candidate in self.nodes:
            candidate, n = f"{node_id}-{n}", n + 1
        return candidate

    def finish(self) -> ImportResult:
        for node in list(self.nodes.values()):
            if node.type not in REGISTRY:  # a mapping onto a node this install does not have (yet)
                self._drop(node.id, f"needs the '{node.type}' node, which is not installed")
        for _ in range(len(self.nodes) + 1):
            try:
                graph = Graph.from_dict(self._data())
                break
            except GraphError as exc:
                culprit = exc.node_id if exc.node_id in self.nodes else None
                if culprit is None:
                    raise ImportFormatError(f"the imported graph is refused: {exc}") from None
                self._drop(culprit, exc.reason if exc.field is None else f"{exc.field}: {exc.reason}")
        else:  # pragma: no cover - each round drops a node
            raise ImportFormatError("the imported graph could not be validated")
        self.report.imported = list(dict.fromkeys(self.report.imported))
        ui = {"positions": {k: v for k, v in self.positions.items() if k in self.nodes}}
        return ImportResult(graph, ui, self.report)

    def _drop(self, node_id: str, reason: str) -> None:
        node = self.nodes.pop(node_id)
        if node.source in self.report.imported and all(n.source != node.source for n in self.nodes.values()):
            self.report.imported.remove(node.source)
        source_id, _, source_type = node.source.partition(" (")
        self.report.unmapped_node(source_id, source_type.rstrip(")"), f"as {node.type}: {reason}")
        self.links = [l for l in self.links if node_id not in (l[0], l[2])]

    def _data(self) -> dict[str, Any]:
        return {"nodes": [{"id": n.id, "type": n.type, **n.values} for n in self.nodes.values()],
                "links": [{"from_node": a, "from_field": b, "to_node": c, "to_field": d} for a, b, c, d in self.links]}
