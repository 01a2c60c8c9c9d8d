"""Prompts -> conditioning tensors: weighting, prompts longer than 77 tokens, embeddings, CLIP skip.

A prompt is parsed (prompt_syntax), tokenized piece by piece and cut into chunks of 75 tokens;
each chunk is encoded on its own as [BOS] + 75 + [EOS/pad] and the chunks' hidden states are
concatenated (as A1111 and ComfyUI do), so nothing past token 77 is dropped.

Weights follow ComfyUI: a token of weight w gets  empty + w * (token - empty),  where `empty` is
the hidden state at the same position of an empty prompt; tokens of weight 1 are left exactly as
encoded, so "(cat:1.0)" and "cat" give identical tensors.

Conditioning is a dict kept in the object store: embeds [1, tokens, width], pooled [1, width]
(SDXL) or None, empty [1, 77, width] (an empty chunk, to pad a shorter prompt to a longer one).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .prompt_syntax import Piece, PromptSyntaxError, parse

CHUNK = 75  # tokens of a chunk between its BOS and EOS


@dataclass
class _Tokens:
    ids: list[int]
    weights: list[float]
    vectors: dict[int, torch.Tensor]  # token index -> embedding vector replacing its token


def _tokenize(pieces: list[Piece], tokenizer: Any, embedding_vectors: Callable[[str, int], torch.Tensor]) -> _Tokens:
    tokens = _Tokens([], [], {})
    for piece in pieces:
        if piece.embedding:
            vectors = embedding_vectors(piece.text, piece.position)
            for row in vectors:
                tokens.vectors[len(tokens.ids)] = row
                tokens.ids.append(0)  # a placeholder: any id that is not EOS (pooling looks for EOS)
                tokens.weights.append(piece.weight)
            continue
        ids = tokenizer(piece.text, add_special_tokens=False, truncation=False).input_ids
        tokens.ids.extend(ids)
        tokens.weights.extend([piece.weight] * len(ids))
    return tokens


def _chunks(tokens: _Tokens, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict[tuple[int, int], torch.Tensor]]:
    """ids [chunks, 77], weights [chunks, 77], and (chunk, position) -> embedding vector."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    count = max(1, -(-len(tokens.ids) // CHUNK))
    ids, weights, vectors = [], [], {}
    for c in range(count):
        part = tokens.ids[c * CHUNK:(c + 1) * CHUNK]
        row = [bos, *part, eos] + [pad] * (CHUNK - len(part))
        ids.append(row)
        weights.append([1.0, *tokens.weights[c * CHUNK:(c + 1) * CHUNK], 1.0] + [1.0] * (CHUNK - len(part)))
        for index, vector in tokens.vectors.items():
            if c * CHUNK <= index < (c + 1) * CHUNK:
                vectors[(c, 1 + index - c * CHUNK)] = vector
    return torch.tensor(ids), torch.tensor(weights, dtype=torch.float32), vectors


def _run_encoder(encoder: Any, ids: torch.Tensor, vectors: dict[tuple[int, int], torch.Tensor], layer: int | None,
                 final_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [chunks, 77, width], pooled output [chunks, width]) of one text encoder.

    layer: None for the last hidden state, else the index into hidden_states (-2: the penultimate).
    Embedding vectors replace their placeholder tokens through a hook on the token embedding, so
    the encoder itself is never changed.
    """
    device = encoder.device
    handle = None
    if vectors:
        def put_vectors(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for (chunk, position), vector in vectors.items():
                output[chunk, position] = vector.to(output.device, output.dtype)
            return output

        handle = encoder.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        out = encoder(ids.to(device), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    if layer is None:
        hidden = out.last_hidden_state
    else:
        hidden = out.hidden_states[layer]
        if final_norm:
            hidden = _final_layer_norm(encoder)(hidden)
    pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
    return hidden, pooled


def _final_layer_norm(encoder: Any) -> Any:
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm


def _weighted(hidden: torch.Tensor, weights: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    w = weights.to(hidden.device, torch.float32)[..., None]
    if bool((w == 1).all()):
        return hidden
    mixed = (empty.float() + (hidden.float() - empty.float()) * w).to(hidden.dtype)
    return torch.where(w == 1, hidden, mixed)


class PromptEncoder:
    """Encodes prompts with a loaded pipeline's tokenizers and text encoders (SD 1.x/2.x or SDXL)."""

    def __init__(self, pipe: Any, base: str, skip: int = 0, embeddings: Callable[[str], Any] | None = None) -> None:
        self.pipe = pipe
        self.sdxl = base == "sdxl"
        self.skip = skip
        self._embeddings = embeddings  # name -> loaded Embedding (KeyError naming the known ones)
        # (tokenizer, text encoder, the name embedding files give its vectors)
        if not self.sdxl:
            self.encoders = [(pipe.tokenizer, pipe.text_encoder, "*")]
        elif pipe.text_encoder is None:  # an SDXL refiner: OpenCLIP bigG only
            self.encoders = [(pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")]
        else:
            self.encoders = [(pipe.tokenizer, pipe.text_encoder, "clip_l"), (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")]

    def _layer(self) -> tuple[int | None, bool]:
        # as diffusers' pipelines: SD 1/2 take the last layer (or skip some and normalise),
        # SDXL always the penultimate one (minus any skipped), not normalised
        if self.sdxl:
            return -(self.skip + 2), False
        return (None, False) if self.skip == 0 else (-(self.skip + 1), True)

    @torch.inference_mode()
    def encode(self, prompt: str, prompt_2: str | None = None) -> dict[str, Any]:
        """prompt_2: SDXL's second encoder's own text (a PromptSyntaxError in it has field "prompt_2")."""
        layer, final_norm = self._layer()
        hidden_parts, pooled, empty_parts = [], None, []
        for index, (tokenizer, encoder, _) in enumerate(self.encoders):
            own = index == 1 and prompt_2 is not None
            try:
                pieces = parse(prompt_2 if own else prompt)  # type: ignore[arg-type]
                tokens = _tokenize(pieces, tokenizer, lambda name, position: self._vectors(name, position, index))
            except PromptSyntaxError as exc:
                exc.field = "prompt_2" if own else "prompt"
                raise
            ids, weights, vectors = _chunks(tokens, tokenizer)
            empty_ids, _, _ = _chunks(_Tokens([], [], {}), tokenizer)
            hidden, pooled_rows = _run_encoder(encoder, torch.cat([ids, empty_ids]), vectors, layer, final_norm)
            hidden, empty = hidden[:-1], hidden[-1:]
            hidden = _weighted(hidden, weights, empty)
            hidden_parts.append(hidden.reshape(1, -1, hidden.shape[-1]))
            empty_parts.append(empty)
            pooled = pooled_rows[:1]  # the last encoder's pooled output of the first chunk (SDXL's)
        embeds, empty = torch.cat(hidden_parts, dim=-1), torch.cat(empty_parts, dim=-1)
        if self.sdxl and not prompt.strip() and self.pipe.config.get("force_zeros_for_empty_prompt", False):
            # SDXL was trained with zeros for an empty (negative) prompt; its pipeline does the same
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        return {"embeds": embeds, "pooled": pooled if self.sdxl else None, "empty": empty}

    def _vectors(self, name: str, position: int, encoder_index: int) -> torch.Tensor:
        if self._embeddings is None:
            raise PromptSyntaxError(f"embedding '{name}' cannot be used here", position)
        try:
            embedding = self._embeddings(name)
        except KeyError as exc:
            raise PromptSyntaxError(f"{exc.args[0] if exc.args else exc}; embedding '{name}'", position) from None
        try:
            vectors = embedding.for_encoder(self.encoders[encoder_index][2])
        except KeyError:
            raise PromptSyntaxError(f"embedding '{name}' has no vectors for this model's text encoder "
                                    f"{encoder_index + 1} (made for another model family?)", position) from None
        width = self.encoders[encoder_index][1].get_input_embeddings().weight.shape[1]
        if vectors.shape[-1] != width:
            raise PromptSyntaxError(f"embedding '{name}' is {vectors.shape[-1]} wide, this model's text encoder "
                                    f"{width} (made for another model family?)", position)
        return vectors


def pad_to(conditioning: dict[str, Any], tokens: int) -> torch.Tensor:
    """The embeds of `conditioning` padded with empty chunks to `tokens` tokens."""
    embeds = conditioning["embeds"]
    missing = tokens - embeds.shape[1]
    if missing <= 0:
        return embeds
    empty = conditioning["empty"].to(embeds.device, embeds.dtype)
    return torch.cat([embeds, *([empty] * (missing // empty.shape[1]))], dim=1)


def guidance_pair(positive: dict[str, Any], negative: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative embeds of equal length (the shorter padded with empty chunks)."""
    length = max(positive["embeds"].shape[1], negative["embeds"].shape[1])
    return pad_to(positive, length), pad_to(negative, length)


def combine(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Both prompts one after the other (ComfyUI's ConditioningConcat); the first's pooled output.
    Regions of `first` each get the second's (first) prompt appended, keeping their masks and areas."""
    from .regions import combined, entries

    if "regions" in first:
        return combined([combine(entry, second) for entry in first["regions"]])
    second = entries(second)[0]
    if first["embeds"].shape[-1] != second["embeds"].shape[-1]:
        raise ValueError("the two conditionings come from different model families")
    embeds = torch.cat([first["embeds"], second["embeds"].to(first["embeds"].device, first["embeds"].dtype)], dim=1)
    return {**first, "embeds": embeds}


def blend(first: dict[str, Any], second: dict[str, Any], alpha: float) -> dict[str, Any]:
    """(1 - alpha) * first + alpha * second, the shorter padded with empty chunks; what rides on the
    first (ControlNets, T2I-Adapters) stays on the result, as ComfyUI's ConditioningAverage keeps
    its `conditioning_to`'s."""
    from .regions import is_regional

    if is_regional(first) or is_regional(second):
        raise ValueError("blend takes plain prompts: blend them before setting masks, areas or regions")
    if first["embeds"].shape[-1] != second["embeds"].shape[-1]:
        raise ValueError("the two conditionings come from different model families")
    a, b = guidance_pair(first, second)
    b = b.to(a.device, a.dtype)
    pooled = None
    if first["pooled"] is not None and second["pooled"] is not None:
        pooled = torch.lerp(first["pooled"], second["pooled"].to(first["pooled"].device, first["pooled"].dtype), alpha)
    return {**first, "embeds": torch.lerp(a, b, alpha), "pooled": pooled}
