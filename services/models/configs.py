"""Offline diffusers config folders for single-file checkpoints, and the real CLIP tokenizer.

`assets/model_configs/<base>/` ships the JSON configs (no weights) of each supported base.
diffusers needs a complete pipeline folder as `config=`, tokenizer included, so
`config_folder()` copies the JSON into a cache folder and adds vocab.json / merges.txt
converted from the BPE vocabulary that open_clip_torch ships (the one OpenAI CLIP uses).
Nothing here imports torch.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "model_configs"
BASES = ("sd1", "sd2", "sdxl")
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_MERGE_COUNT = 49152 - 256 - 2  # CLIP keeps this many merges of the file (its vocabulary is 49408 tokens)
_FORMAT_VERSION = "1"  # bump when the folder layout written below changes


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def bpe_vocab_path() -> Path:
    """The CLIP BPE file inside the installed open_clip_torch package (found without importing it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the CLIP tokenizer vocabulary comes from the 'open-clip-torch' package; install it")
    path = Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"open_clip is installed but has no {_BPE_FILE} ({path})")
    return path


@lru_cache(maxsize=1)
def clip_vocab() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) exactly as OpenAI's CLIP tokenizer builds them."""
    lines = gzip.open(bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:_MERGE_COUNT + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """Write a complete CLIPTokenizer folder (vocab.json, merges.txt, configs) into `folder`."""
    vocab, merges = clip_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        config = json.loads((ASSETS / "sd1" / "tokenizer" / "tokenizer_config.json").read_text("utf-8"))
        config["pad_token"] = pad_token
        config_path.write_text(json.dumps(config, indent=2), "utf-8")


def config_folder(base: str, cache_root: Path) -> Path:
    """A complete offline diffusers config folder for `base`, built once under `cache_root`."""
    if base not in BASES:
        raise ValueError(f"no shipped config for base '{base}' (known: {', '.join(BASES)})")
    target = Path(cache_root) / f"{base}-v{_FORMAT_VERSION}"
    if (target / ".complete").is_file():
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(ASSETS / base, staging)
    for tokenizer_dir in staging.glob("tokenizer*"):
        write_clip_tokenizer(tokenizer_dir)
    (staging / ".complete").write_text("ok")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target
