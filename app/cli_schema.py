"""Commands generated from the node schema: parsing a command's words, turning option text into
field values, and the help text.

Nothing here knows a node by name: every registered node (built-in or plugin) is a command whose
options are its input ports, so a new node needs no CLI code.  Values are handed to the graph as
text where pydantic's lax mode converts them ("64" -> 64, "yes" -> True), so the engine's own
validation (types, bounds, enum choices) is the only validation and its messages are the ones shown.
"""
from __future__ import annotations

import difflib
import shlex
import shutil
import textwrap
from dataclasses import dataclass, field
from typing import Any

from nodes.base import PIN_TYPES, REGISTRY, BaseInvocation, Port, list_item_tag
from nodes.core.untrusted import UntrustedInputError, load_json

# Options every node command has, besides its inputs: (option, metavar, help)
COMMON_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--link", "FROM_NODE FROM_FIELD TO_FIELD",
     "link an output into an input; FROM_NODE is a node id or a history index (-1 = the previous node)"),
    ("--no-link", "", "do not link the previous node's outputs automatically"),
    ("--id", "ID", "give the node this id instead of the next number"),
    ("--help", "", "show this help"),
)
COMMON_NAMES = tuple(name for name, _, _ in COMMON_OPTIONS)

# Reference pins travel as small objects (nodes.base.PIN_TYPES); on the command line the bare
# name (an image name, a model id) is enough.
_NONE_WORDS = frozenset({"none", "null"})


class CommandError(ValueError):
    """Bad command input; the message is one line naming the command and the option."""

    def __init__(self, command: str | None, option: str | None, reason: str) -> None:
        self.command, self.option, self.reason = command, option, reason
        where = " ".join(part for part in (command, option) if part)
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass
class ParsedCommand:
    node_type: str
    values: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # the option text as typed, for messages
    links: list[tuple[str | int, str, str]] = field(default_factory=list)
    auto_link: bool = True
    node_id: str | None = None
    help: bool = False


def node_types() -> list[str]:
    return sorted(REGISTRY)


def option_name(port_name: str) -> str:
    return "--" + port_name


def suggestion(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def parse_value(port: Port, text: str) -> Any:
    """Option text -> a value the node's field validates (pydantic converts scalars from text)."""
    if port.default is None and not port.required and text.lower() in _NONE_WORDS:
        return None
    stripped = text.strip()
    if port.tag in PIN_TYPES:
        return _json(stripped) if stripped.startswith("{") else {PIN_TYPES[port.tag].key: stripped}
    if list_item_tag(port.tag) is not None:
        if stripped.startswith("["):
            return _json(stripped)
        return [item.strip() for item in stripped.split(",") if item.strip()]
    if port.tag == "any":
        try:
            return load_json(stripped)
        except UntrustedInputError as exc:
            if "nested deeper" in str(exc):
                raise
            return text
    return text


def _json(text: str) -> Any:
    return load_json(text)  # its UntrustedInputError is a ValueError saying why


_BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def parse_command(words: list[str]) -> ParsedCommand:
    """One command's words (the command name first) -> what to add.  Raises CommandError."""
    name = words[0]
    cls = REGISTRY.get(name)
    if cls is None:
        raise CommandError(None, None, f"unknown command '{name}'{suggestion(name, node_types())}; 'help' lists commands")
    ports = cls.inputs()
    parsed = ParsedCommand(name)
    rest = list(words[1:])
    while rest:
        word = rest.pop(0)
        if not word.startswith("--"):
            raise CommandError(name, None, f"unexpected argument {word!r} (values follow an --option)")
        key, has_value, inline = word.partition("=")
        if key in ("--help", "-h"):
            parsed.help = True
        elif key == "--no-link":
            parsed.auto_link = False
        elif key == "--link":
            if len(rest) < 3 or any(w.startswith("--") for w in rest[:3]):
                raise CommandError(name, "--link", "takes three values: FROM_NODE FROM_FIELD TO_FIELD")
            source, from_field, to_field = rest[:3]
            del rest[:3]
            parsed.links.append((int(source) if _is_negative_int(source) else source, from_field, to_field))
        elif key == "--id":
            parsed.node_id = _take_value(name, key, has_value, inline, rest, "ID")
            if _is_negative_int(parsed.node_id) or not parsed.node_id:
                raise CommandError(name, key, "give a name or a positive number (negative numbers are history links)")
        else:
            field_name = key[2:].replace("-", "_")
            port = ports.get(field_name)
            if port is None and field_name.startswith("no_") and field_name[3:] in ports and ports[field_name[3:]].tag == "bool":
                field_name, port, has_value, inline = field_name[3:], ports[field_name[3:]], "=", "false"
            if port is None:
                options = [option_name(p) for p in ports] + list(COMMON_NAMES)
                raise CommandError(name, key, f"unknown option{suggestion(key, options)}; options are {', '.join(options)}")
            if field_name in parsed.values:
                raise CommandError(name, key, "given twice")
            if port.tag == "bool" and not has_value and not (rest and rest[0].lower() in _BOOL_WORDS):
                text = "true"  # a bare boolean flag switches it on
            else:
                text = _take_value(name, key, has_value, inline, rest, metavar(port))
            try:
                parsed.values[field_name] = parse_value(port, text)
            except ValueError as exc:
                raise CommandError(name, key, f"{exc} (got {shown(text)})") from None
            parsed.texts[field_name] = text
    return parsed


def shown(text: str, limit: int = 60) -> str:
    """What was typed, quoted, for an error line (a pasted megabyte stays out of it)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def _is_negative_int(text: str) -> bool:
    return text.startswith("-") and text[1:].isascii() and text[1:].isdigit()  # '¹'.isdigit() is True


def _take_value(command: str, key: str, has_value: str, inline: str, rest: list[str], meta: str) -> str:
    if has_value:
        return inline
    if not rest or rest[0].startswith("--"):
        raise CommandError(command, key, f"needs a value ({meta})")
    return rest.pop(0)


# --------------------------------------------------------------------------------------------
# Splitting a line into piped commands


def _unquoted_pipes(line: str) -> list[int]:
    """Positions of the `|` characters that are outside quotes and not escaped."""
    positions, quote, escaped = [], None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "|":
            positions.append(i)
    return positions


def split_pipeline(line: str) -> list[list[str]]:
    """'a --x "1 | 2" | b' -> [['a', '--x', '1 | 2'], ['b']]: splits on `|` outside quotes."""
    cuts = _unquoted_pipes(line)
    segments = [line[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(line)])]
    try:
        words = [shlex.split(segment) for segment in segments]
    except ValueError as exc:  # an unclosed quote
        raise CommandError(None, None, f"cannot read the line: {exc}") from None
    if len(words) > 1 and any(not w for w in words):
        raise CommandError(None, None, "empty command in the pipe")
    return [w for w in words if w]


def last_segment(line: str) -> str:
    """The text after the last `|` outside quotes (what the cursor is completing)."""
    cuts = _unquoted_pipes(line)
    return line[cuts[-1] + 1:] if cuts else line


# --------------------------------------------------------------------------------------------
# Help text

_METAVARS = {"int": "INT", "float": "NUMBER", "bool": "[BOOL]", "str": "TEXT", "prompt": "TEXT", "path": "PATH",
             "model": "MODEL", "seed": "SEED", "any": "VALUE",
             **{tag: pin.key.upper() if pin.key != "model_id" else "MODEL" for tag, pin in PIN_TYPES.items()}}


def metavar(port: Port) -> str:
    if port.choices is not None:
        return "{" + ",".join(str(c) for c in port.choices) + "}"
    item = list_item_tag(port.tag)
    if item is not None:
        one = _METAVARS.get(item, "VALUE")
        return f"{one},{one},..."
    return _METAVARS.get(port.kind, _METAVARS.get(port.tag, "VALUE"))


def option_details(port: Port) -> str:
    """'int, default 512, 1..16384' style summary of a port's type and constraints."""
    parts = [port.tag if port.kind in (port.tag, "enum", "list") else f"{port.tag} ({port.kind})"]
    if port.required:
        parts.append("required")
    elif port.kind == "seed" and port.default == -1:
        parts.append("default random")
    elif port.default not in (None, "", [], {}):
        parts.append(f"default {port.default}")
    if port.ge is not None or port.le is not None:
        low = _number(port.ge) if port.ge is not None else ""
        high = _number(port.le) if port.le is not None else ""
        parts.append(f"range {low}..{high}")
    if port.multiple_of is not None:
        parts.append(f"multiple of {_number(port.multiple_of)}")
    if port.model_kind:
        parts.append(f"{port.model_kind} model id")
    if port.collect:
        parts.append("takes many links")
    if port.tag in PIN_TYPES or list_item_tag(port.tag) in PIN_TYPES:
        parts.append("usually linked")
    return ", ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def command_help(cls: type[BaseInvocation], width: int | None = None) -> str:
    width = width or terminal_width()
    lines = [f"{cls.node_type}: {cls.description()}", f"category: {cls.category}", "", "options:"]
    rows = [(f"{option_name(n)} {metavar(p)}", option_details(p), p.description) for n, p in cls.inputs().items()]
    rows += [(f"{name} {meta}".rstrip(), "", text) for name, meta, text in COMMON_OPTIONS]
    left = min(max(len(r[0]) for r in rows), 36)
    for head, details, text in rows:
        body = "; ".join(part for part in (details, text) if part)
        wrapped = textwrap.wrap(body, max(30, width - left - 4)) or [""]
        if len(head) > left:
            lines.append(f"  {head}")
            lines += [f"  {'':<{left}}  {w}" for w in wrapped]
        else:
            lines.append(f"  {head:<{left}}  {wrapped[0]}")
            lines += [f"  {'':<{left}}  {w}" for w in wrapped[1:]]
    outputs = ", ".join(f"{n} ({p.tag})" for n, p in cls.outputs().items())
    lines += ["", f"outputs: {outputs}",
              "Inputs left out are linked from the previous node's outputs of the same name and type (--no-link: off)."]
    return "\n".join(lines)


def commands_overview(session_commands: dict[str, str], width: int | None = None) -> str:
    width = width or terminal_width()
    by_category: dict[str, list[type[BaseInvocation]]] = {}
    for node_type in node_types():
        cls = REGISTRY[node_type]
        by_category.setdefault(cls.category, []).append(cls)
    left = max([len(t) for t in REGISTRY] + [len(c) for c in session_commands] + [8])
    lines = ["node commands (join them with |; 'help CMD' or 'CMD --help' shows a command's options):"]
    for category in sorted(by_category):
        lines.append(f"  {category}:")
        for cls in by_category[category]:
            lines.append(f"    {cls.node_type:<{left}}  {_clip(cls.description(), width - left - 6)}")
    lines += ["", "session commands:"]
    lines += [f"    {name:<{left}}  {text}" for name, text in session_commands.items()]
    return "\n".join(lines)


def terminal_width() -> int:
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 140))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."
