"""What each pin looks like and which widget edits it, derived only from the node's Port
declarations: a node type added anywhere (built-in or plugin) gets its widgets for free."""
from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass, replace
from typing import Any

from nodes.base import PIN_TYPES, RANDOM_SEED, SEED_MAX, Port, list_item_tag

RGB = tuple[int, int, int]

# Link types users meet most get fixed, distinct colours; anything else (a plugin's own tag)
# gets a stable colour from its name, so it is still told apart without canvas code.
TAG_COLOURS: dict[str, RGB] = {
    "int": (86, 156, 214),
    "float": (78, 201, 176),
    "bool": (220, 120, 120),
    "str": (206, 145, 120),
    "any": (170, 170, 170),
    **{tag: pin.colour for tag, pin in PIN_TYPES.items()},
}


def tag_colour(tag: str) -> RGB:
    item = list_item_tag(tag)
    if item is not None:
        return tag_colour(item)  # a list has its items' colour; the pin shape says "list"
    if tag in TAG_COLOURS:
        return TAG_COLOURS[tag]
    hue = int(hashlib.md5(tag.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.55, 0.9)
    return (int(r * 255), int(g * 255), int(b * 255))


# Widget kinds the view knows how to draw.  "none": the input is set only through a link.
WIDGET_KINDS = ("int", "float", "bool", "text", "multiline", "combo", "seed", "path", "model", "none")


@dataclass(frozen=True)
class WidgetSpec:
    kind: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    model_kind: str | None = None
    optional: bool = False  # the field may hold None ("not set"): an empty box / "(none)" clears it


NONE_CHOICE = "(none)"


def widget_for(port: Port) -> WidgetSpec:
    """The widget that edits an unlinked input (bounds from the field's ge/le)."""
    spec = _widget_for(port)
    if not port.required and port.default is None and spec.kind != "none":
        return replace(spec, optional=True)
    return spec


def _widget_for(port: Port) -> WidgetSpec:
    kind = port.kind
    if kind == "seed":
        return WidgetSpec("seed", min=RANDOM_SEED, max=SEED_MAX)
    if kind == "enum" and port.choices:
        return WidgetSpec("combo", choices=tuple(port.choices))
    if kind == "model":
        return WidgetSpec("model", model_kind=port.model_kind)
    if kind == "prompt":
        return WidgetSpec("multiline")
    if kind == "path":
        return WidgetSpec("path")
    if kind in ("int", "float"):
        return WidgetSpec(kind, min=port.ge, max=port.le, step=port.multiple_of)
    if kind == "bool":
        return WidgetSpec("bool")
    if kind == "str":
        return WidgetSpec("text")
    # link-only types (image, latents, lists, any) and unknown kinds: a plain str still gets a text box
    return WidgetSpec("text") if port.tag == "str" else WidgetSpec("none")


def coerce(spec: WidgetSpec, value: Any) -> Any:
    """A widget's raw value as the field expects it (combos hand back strings; empty text for
    an optional number means "unset")."""
    if spec.optional and value in ("", NONE_CHOICE, None):
        return None
    if spec.kind == "combo" and spec.choices:
        for choice in spec.choices:
            if str(choice) == str(value):
                return choice
    if spec.kind in ("int", "seed") and not isinstance(value, bool):
        return int(value)
    if spec.kind == "float":
        return float(value)
    return value


@dataclass(frozen=True)
class PinSpec:
    name: str
    title: str
    tag: str
    colour: RGB
    is_list: bool
    description: str
    widget: WidgetSpec  # for outputs always "none"
    required: bool
    collect: bool


def pin_spec(port: Port, output: bool = False) -> PinSpec:
    tooltip = port.description or port.title
    tooltip = f"{tooltip}\n[{port.tag}{', collects many links' if port.collect else ''}{', required' if port.required else ''}]"
    return PinSpec(port.name, port.title, port.tag, tag_colour(port.tag), list_item_tag(port.tag) is not None or port.collect,
                   tooltip, WidgetSpec("none") if output else widget_for(port), port.required, port.collect)
