"""Prompt weighting syntax (as ComfyUI and A1111 write it), parsed into weighted pieces.

    (word)        weight x 1.1          ((word))  x 1.21
    (word:1.3)    weight x 1.3          nesting multiplies
    [word]        weight / 1.1
    \\( \\) \\[ \\] \\\\  literal characters
    embedding:name  or  <name>          a textual-inversion embedding from <models>/embeddings/

No library fits: compel's syntax is another one ("word++", "(word)1.3"), so a user's prompts
from ComfyUI or A1111 would mean something else.  Torch-free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

UP = 1.1  # what one pair of () multiplies by, and [] divides by
_WEIGHT = re.compile(r":\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)")
_EMBEDDING = re.compile(r"embedding:([\w.\-]+)|<([\w.\-]+)>")


class PromptSyntaxError(ValueError):
    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at character {position + 1}")
        self.position = position  # 0-based index into the prompt
        self.field = "prompt"  # the node field it came from, when a node has several prompts


@dataclass(frozen=True)
class Piece:
    text: str  # the words, or the embedding's name when `embedding` is set
    weight: float
    embedding: bool = False
    position: int = 0  # where it starts in the prompt (for messages)


def parse(prompt: str) -> list[Piece]:
    """Weighted pieces of a prompt; adjacent text of one weight is merged.  Raises PromptSyntaxError."""
    pieces: list[Piece] = []
    # open groups: (bracket, position, index in pieces where the group starts)
    groups: list[tuple[str, int, int]] = []
    text: list[str] = []
    text_start = 0

    def flush(at: int) -> None:
        nonlocal text_start
        if text:
            pieces.append(Piece("".join(text), 1.0, position=text_start))
            text.clear()
        text_start = at

    def close(start: int, factor: float) -> None:
        for k in range(start, len(pieces)):
            piece = pieces[k]
            pieces[k] = Piece(piece.text, piece.weight * factor, piece.embedding, piece.position)

    i = 0
    while i < len(prompt):
        char = prompt[i]
        if char == "\\" and i + 1 < len(prompt) and prompt[i + 1] in "()[]\\:":
            if not text:
                text_start = i
            text.append(prompt[i + 1])
            i += 2
            continue
        if char in "([":
            flush(i)
            groups.append((char, i, len(pieces)))
            i += 1
            text_start = i
            continue
        if char in ")]":
            if not groups or groups[-1][0] != ("(" if char == ")" else "["):
                raise PromptSyntaxError(f"'{char}' closes nothing (write \\{char} for the character itself)", i)
            flush(i + 1)
            _, _, start = groups.pop()
            close(start, UP if char == ")" else 1 / UP)
            i += 1
            continue
        if char == ":" and groups and groups[-1][0] == "(":
            match = _WEIGHT.match(prompt, i)
            if match:
                flush(match.end())
                _, _, start = groups.pop()
                close(start, float(match.group(1)))
                i = match.end()
                continue
        match = _EMBEDDING.match(prompt, i)
        if match and (char == "<" or i == 0 or not (prompt[i - 1].isalnum() or prompt[i - 1] == "_")):
            flush(i)
            pieces.append(Piece(match.group(1) or match.group(2), 1.0, embedding=True, position=i))
            i = match.end()
            text_start = i
            continue
        if not text:
            text_start = i
        text.append(char)
        i += 1
    if groups:
        bracket, position, _ = groups[-1]
        closing = ")" if bracket == "(" else "]"
        raise PromptSyntaxError(f"'{bracket}' is never closed with '{closing}' (write \\{bracket} for the character itself)",
                                position)
    flush(len(prompt))
    return _merge(pieces)


def _merge(pieces: list[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if last is not None and not piece.embedding and not last.embedding and last.weight == piece.weight:
            merged[-1] = Piece(last.text + piece.text, last.weight, position=last.position)
        else:
            merged.append(piece)
    return merged
