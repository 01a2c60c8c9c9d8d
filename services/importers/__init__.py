"""Import graphs made by other tools: ComfyUI (API and UI workflows), AUTOMATIC1111/Forge parameters,
InvokeAI (workflows and graphs), as JSON/text files or PNG text chunks.  The format is found from
the content; each format has its module with its mapping table.  Pure data: no torch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nodes.core.untrusted import MAX_JSON_BYTES, UntrustedInputError, load_json, open_image_texts

from . import a1111, comfyui, invokeai
from .report import ImportFormatError, ImportReport, ImportResult, ModelCatalog

__all__ = ["FORMATS", "ImportFormatError", "ImportReport", "ImportResult", "ModelCatalog", "detect", "import_data"]

FORMATS = ("comfyui", "a1111", "invokeai")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PNG text chunks, most complete first: a workflow keeps positions, an API prompt or graph does not
_CHUNKS = (("invokeai_workflow", "invokeai"), ("invokeai_graph", "invokeai"), ("workflow", "comfyui"),
           ("prompt", "comfyui"), ("parameters", "a1111"))


def _payloads(data: bytes, source: str) -> list[tuple[str, Any]]:
    """[(format, document)] the file holds, best first.  Raises ImportFormatError naming the file."""
    if len(data) > MAX_JSON_BYTES:
        raise ImportFormatError(f"{source}: too large ({len(data)} bytes; at most {MAX_JSON_BYTES})")
    if data.startswith(PNG_MAGIC):
        try:
            texts = open_image_texts(data)
        except UntrustedInputError as exc:
            raise ImportFormatError(f"{source}: {exc}") from None
        found = []
        for key, fmt in _CHUNKS:
            if key in texts:
                found.append((fmt, texts[key] if fmt == "a1111" else _json(texts[key], f"{source} ({key} chunk)")))
        if "invoke-nodes" in texts:  # ours: opened as a session; its parameters chunk is for other tools
            found.insert(0, ("invoke-nodes", None))
        return found
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportFormatError(f"{source}: neither a PNG nor UTF-8 text (JSON or A1111 parameters)") from None
    if text.lstrip()[:1] in ("{", "["):
        document = _json(text, source)
        if isinstance(document, dict) and document.get("format") == "invoke-nodes/session":
            return [("invoke-nodes", None)]
        return [(fmt, document) for fmt in FORMATS if fmt != "a1111" and _matches(fmt, document)]
    return [("a1111", text)] if a1111.looks_like(text) else []


def _json(text: str, source: str) -> Any:
    try:
        return load_json(text)
    except UntrustedInputError as exc:
        raise ImportFormatError(f"{source}: {exc}") from None


def _matches(fmt: str, document: Any) -> bool:
    if fmt == "comfyui":
        return comfyui.is_api_format(document) or comfyui.is_ui_format(document)
    if fmt == "invokeai":
        return invokeai.is_workflow(document) or invokeai.is_graph(document)
    return isinstance(document, str) and a1111.looks_like(document)


def detect(data: bytes, source: str = "the file") -> str | None:
    """The foreign format a file holds ("comfyui", "a1111", "invokeai"), or None: ours or unknown."""
    found = _payloads(data, source)
    return found[0][0] if found and found[0][0] in FORMATS else None


def import_data(data: bytes, filename: str, catalog: ModelCatalog, *, folder: Path | None = None,
                fmt: str | None = None) -> ImportResult:
    """Our graph (validated), its node positions and the import report.  `folder`: where the file
    lies (images named by the workflow are looked for there); `fmt` forces one format."""
    source = Path(filename).name or "the file"
    if fmt is not None and fmt not in FORMATS:
        raise ImportFormatError(f"{source}: unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    found = [(f, d) for f, d in _payloads(data, source) if f in FORMATS and (fmt is None or f == fmt)]
    if not found:
        wanted = fmt or "ComfyUI, AUTOMATIC1111 or InvokeAI"
        kind = "PNG carries no" if data.startswith(PNG_MAGIC) else "file holds no"
        raise ImportFormatError(f"{source}: this {kind} {wanted} workflow or parameters")
    fmt, document = found[0]
    image = folder / source if folder is not None and data.startswith(PNG_MAGIC) else None
    try:
        if fmt == "a1111":
            return a1111.convert(document, ImportReport("a1111", source, unit="settings"), catalog, image)
        if fmt == "comfyui":
            if comfyui.is_ui_format(document):
                report = ImportReport("comfyui-workflow", source)
                return comfyui.convert(comfyui.read_ui(document, report), report, catalog, folder)
            report = ImportReport("comfyui-api", source)
            return comfyui.convert(comfyui.read_api(document), report, catalog, folder)
        if invokeai.is_workflow(document):
            nodes, edges = invokeai.read_workflow(document)
            return invokeai.convert(nodes, edges, ImportReport("invokeai-workflow", source), catalog, folder)
        nodes, edges = invokeai.read_graph(document)
        return invokeai.convert(nodes, edges, ImportReport("invokeai-graph", source), catalog, folder)
    except ImportFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # a malformed document
        raise ImportFormatError(f"{source}: malformed {fmt} data ({type(exc).__name__}: {exc})") from None
