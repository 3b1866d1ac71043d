"""One tokenizer interface over three sources: Meta's tiktoken `tokenizer.model`, an HF
`tokenizer.json`, and the vocabulary stored in a GGUF file; plus a byte tokenizer for tests.

Encoding rules (the same for every source):
- `encode` never adds BOS/EOS; prepend `bos_id` yourself.
- Input text is plain text: special tokens of the base vocabulary written in the text (e.g.
  "<|eot_id|>") are NOT recognised, as in Meta's reference tokenizer. Item and user text is
  untrusted, so it must not be able to inject control tokens.
- Markers registered with `add_special_tokens` ARE recognised and always encode to one id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as HFTokenizer

from ff_jax.model.gguf_tokenizer import load_gguf_tokenizer
# The Tokenizer and LLaMA-3's constants, under the names callers have always imported from here.
from ff_jax.model.tokenizer_core import (LLAMA3_PAD, LLAMA3_SPECIALS, LLAMA3_SPLIT, SIDECAR, Tokenizer,
                                         _ByteBackend, _TiktokenBackend, hf_tokenizer)


# --------------------------------------------------------------------------- loading


def byte_tokenizer(special_tokens: Sequence[str] = ()) -> Tokenizer:
    """A tiny dependency-free tokenizer (259 ids + `special_tokens`) for tests."""
    tok = Tokenizer(_ByteBackend(), bos_id=256, eos_id=257, pad_id=258, source="bytes")
    if special_tokens:
        tok.add_special_tokens(special_tokens)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tiktoken `tokenizer.model`, a `tokenizer.json`, a `.gguf` file, or a directory holding one
    of them (a directory written by `Tokenizer.save` is restored with its markers)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    if path.is_dir():
        return _load_directory(path)
    if path.suffix == ".gguf":
        return load_gguf_tokenizer(path)
    if path.suffix == ".json":
        return tokenizer_from_json_file(path)
    return tiktoken_tokenizer(path)


def tiktoken_tokenizer(path: str | Path) -> Tokenizer:
    """Meta's LLaMA-3 tokenizer: tiktoken ranks + the LLaMA-3 split and 256 special tokens."""
    backend = _TiktokenBackend(Path(path))
    s = backend.specials
    return Tokenizer(backend, bos_id=s["<|begin_of_text|>"], eos_id=s["<|end_of_text|>"],
                     pad_id=s[LLAMA3_PAD], source=str(path))


def tokenizer_from_json_file(path: str | Path) -> Tokenizer:
    """An HF `tokenizer.json`; bos/eos/pad from a `tokenizer_config.json` beside it when present."""
    path = Path(path)
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception with the serde message
        raise ValueError(f"{path}: not a valid HF tokenizer.json ({err})") from err
    config_path = path.parent / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return hf_tokenizer(hf, source=str(path), config=config)


def _load_directory(directory: Path) -> Tokenizer:
    sidecar_path = directory / SIDECAR
    if sidecar_path.exists():
        sidecar = json.loads(sidecar_path.read_text())
        ids = {key: sidecar[key] for key in ("bos_id", "eos_id", "pad_id")}
        if sidecar["backend"] == "bytes":
            tok = byte_tokenizer()
        elif sidecar["backend"] == "tiktoken":
            tok = tiktoken_tokenizer(directory / sidecar["file"])
        else:
            hf = HFTokenizer.from_file(str(directory / sidecar["file"]))
            tok = hf_tokenizer(hf, source=str(directory), **ids)
        tok.bos_id, tok.eos_id, tok.pad_id = ids["bos_id"], ids["eos_id"], ids["pad_id"]
        for text, token_id in sidecar["markers"]:
            (got,) = tok.add_special_tokens([text])
            if got != token_id:
                raise ValueError(f"{sidecar_path}: marker {text!r} should have id {token_id}, got {got}")
        return tok
    for name in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model"):
        if (directory / name).exists():
            return load_tokenizer(directory / name)
    ggufs = sorted(directory.glob("*.gguf"))
    if len(ggufs) == 1:
        return load_tokenizer(ggufs[0])
    raise FileNotFoundError(f"{directory}: no tokenizer.json, tokenizer.model or single .gguf file in it")
