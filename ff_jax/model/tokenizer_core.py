"""Tokenizer: text <-> ids over one backend (Meta's tiktoken ranks, an HF `tokenizers.Tokenizer`, or
bytes), the backends, and LLaMA-3's split and special tokens. The encoding rules are in
ff_jax.model.tokenizer, which loads a Tokenizer from its files (`load_tokenizer`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Protocol, Sequence

import tiktoken

SIDECAR = "ff_jax_tokenizer.json"  # bos/eos/pad and added markers, written by Tokenizer.save

# LLaMA-3's pre-tokenizer split (from Meta's tokenizer) and its 256 special tokens.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_NAMED_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
    "<|python_tag|>", "<|image|>",
]
LLAMA3_SPECIALS = _LLAMA3_NAMED_SPECIALS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + 256 - len(_LLAMA3_NAMED_SPECIALS))
]
# Pad choice for LLaMA-3: the token Meta reserved for right padding in fine-tuning. It is never
# produced by encoding text, so padded positions cannot be confused with content.
LLAMA3_PAD = "<|finetune_right_pad_id|>"

# tiktoken aborts on very long inputs / very long runs without (or of only) whitespace, so long
# text is cut first, at the same places Meta's reference cuts it (ids stay identical).
_TIKTOKEN_MAX_CHARS = 400_000
_TIKTOKEN_MAX_RUN = 25_000


class _Backend(Protocol):
    vocab_size: int

    def encode_pieces(self, pieces: list[str]) -> list[list[int]]: ...
    def decode(self, ids: list[int]) -> str: ...
    def special_id(self, name: str) -> int | None: ...
    def save(self, directory: Path) -> dict: ...


class Tokenizer:
    """Text <-> ids. `vocab_size` counts markers added with `add_special_tokens`."""

    def __init__(self, backend: _Backend, *, bos_id: int, eos_id: int, pad_id: int, source: str):
        self._backend = backend
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        self.source = source
        self._markers: dict[str, int] = {}
        self._new_tokens: dict[int, str] = {}  # ids beyond the base vocabulary -> marker text
        self._marker_re: re.Pattern | None = None

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size}, markers={len(self._markers)})"

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size + len(self._new_tokens)

    @property
    def markers(self) -> dict[str, int]:
        """The markers added with `add_special_tokens`, text -> id."""
        return dict(self._markers)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Register markers that always encode to one id. Idempotent. A marker that already is a
        single token of the vocabulary (e.g. "<|eot_id|>") keeps that id; others get new ids at the
        end of the vocabulary, so the embedding must grow (`ff_jax.model.vocab.grow_vocab`)."""
        ids = []
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(f"special token must be a non-empty string, got {token!r}")
            if token not in self._markers:
                existing = self.token_to_id(token)
                if existing is None:
                    existing = self.vocab_size
                    self._new_tokens[existing] = token
                self._markers[token] = existing
            ids.append(self._markers[token])
        # Longest first, so a marker that contains another one wins.
        alternatives = sorted(self._markers, key=len, reverse=True)
        self._marker_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        return ids

    def token_to_id(self, token: str) -> int | None:
        """The id of a marker, a special token name, or text that is exactly one token."""
        if token in self._markers:
            return self._markers[token]
        special = self._backend.special_id(token)
        if special is not None:
            return special
        (ids,) = self._backend.encode_pieces([token])
        if len(ids) == 1 and self._backend.decode(ids) == token:
            return ids[0]
        return None

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Cut every text at its markers, encode all plain pieces in one backend batch, reassemble.
        # Per text: [marker_id] lists and int indices into `pieces`.
        layouts: list[list[int | list[int]]] = []
        pieces: list[str] = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode expects str, got {type(text).__name__}")
            parts = self._marker_re.split(text) if self._marker_re else [text]
            layout: list[int | list[int]] = []
            for i, part in enumerate(parts):
                if i % 2:  # odd positions of re.split with one group are the markers
                    layout.append([self._markers[part]])
                elif part:
                    layout.append(len(pieces))
                    pieces.append(part)
            layouts.append(layout)
        encoded = self._backend.encode_pieces(pieces) if pieces else []
        out = []
        for layout in layouts:
            ids: list[int] = []
            for entry in layout:
                ids.extend(entry if isinstance(entry, list) else encoded[entry])
            out.append(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        base_size = self._backend.vocab_size
        text, run = [], []
        for token_id in (int(i) for i in ids):
            if token_id < 0 or token_id >= self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
            if token_id < base_size:
                run.append(token_id)
                continue
            if run:
                text.append(self._backend.decode(run))
                run = []
            text.append(self._new_tokens[token_id])
        if run:
            text.append(self._backend.decode(run))
        return "".join(text)

    def save(self, directory: str | Path) -> None:
        """Write the vocabulary and a sidecar with bos/eos/pad and markers; `load_tokenizer(directory)`
        restores exactly this tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sidecar = self._backend.save(directory)
        sidecar.update(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id,
                       markers=[[text, token_id] for text, token_id in self._markers.items()])
        (directory / SIDECAR).write_text(json.dumps(sidecar, indent=1))


# --------------------------------------------------------------------------- backends


class _TiktokenBackend:
    def __init__(self, path: Path):
        self.path = path
        ranks = read_tiktoken_ranks(path)
        self.specials = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIALS)}
        self.encoding = tiktoken.Encoding(
            name=path.name, pat_str=LLAMA3_SPLIT, mergeable_ranks=ranks, special_tokens=self.specials
        )
        self.vocab_size = len(ranks) + len(self.specials)

    def encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        out = []
        for piece in pieces:
            ids: list[int] = []
            for chunk in _tiktoken_safe_chunks(piece):
                ids.extend(self.encoding.encode_ordinary(chunk))
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def special_id(self, name: str) -> int | None:
        return self.specials.get(name)

    def save(self, directory: Path) -> dict:
        if self.path.resolve() != (directory / "tokenizer.model").resolve():
            shutil.copyfile(self.path, directory / "tokenizer.model")
        return {"backend": "tiktoken", "file": "tokenizer.model"}


class _HFBackend:
    """A `tokenizers.Tokenizer` (from tokenizer.json, or built from GGUF metadata)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # Special tokens in input text are plain text (see module docstring).
        self.tokenizer.encode_special_tokens = True
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}

    def encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(pieces, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def special_id(self, name: str) -> int | None:
        return self.specials.get(name)

    def save(self, directory: Path) -> dict:
        self.tokenizer.save(str(directory / "tokenizer.json"))
        return {"backend": "tokenizer.json", "file": "tokenizer.json"}


class _ByteBackend:
    """UTF-8 bytes 0..255, then BOS, EOS, PAD. No dependencies, no files: for tests."""

    specials = {"<|begin_of_text|>": 256, "<|end_of_text|>": 257, "<|pad|>": 258}
    vocab_size = 259

    def encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        return [list(piece.encode("utf-8")) for piece in pieces]

    def decode(self, ids: list[int]) -> str:
        names = {i: name for name, i in self.specials.items()}
        out, run = [], bytearray()
        for i in ids:
            if i in names:
                out.append(run.decode("utf-8", errors="replace") + names[i])
                run = bytearray()
            else:
                run.append(i)
        return "".join(out) + run.decode("utf-8", errors="replace")

    def special_id(self, name: str) -> int | None:
        return self.specials.get(name)

    def save(self, directory: Path) -> dict:
        return {"backend": "bytes"}


def hf_tokenizer(hf, *, source: str, config: dict | None = None, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None) -> Tokenizer:
    """Wrap a `tokenizers.Tokenizer`. Explicit ids win; then tokenizer_config.json's bos_token /
    eos_token / pad_token; then well-known names. Pad falls back to LLaMA-3's pad token, then EOS."""
    backend = _HFBackend(hf)
    config = config or {}

    def find(explicit, key, candidates):
        if explicit is not None:
            return int(explicit)
        named = config.get(key)
        if isinstance(named, dict):  # older configs store an AddedToken dict
            named = named.get("content")
        for name in ([named] if named else []) + candidates:
            token_id = hf.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    eos = find(eos_id, "eos_token", ["<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"])
    if eos is None:
        raise ValueError(f"{source}: cannot tell the end-of-text token; add a tokenizer_config.json "
                         "with 'eos_token' beside it")
    bos = find(bos_id, "bos_token", ["<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>"])
    pad = find(pad_id, "pad_token", [LLAMA3_PAD])
    return Tokenizer(backend, bos_id=eos if bos is None else bos, eos_id=eos,
                     pad_id=eos if pad is None else pad, source=source)


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file: one `base64(token bytes) rank` per line."""
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a tiktoken ranks file (binary; a SentencePiece model? "
                         "use its tokenizer.json instead)") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: expected 'base64-token rank', got {line[:60]!r}") from err
    if not ranks:
        raise ValueError(f"{path}: empty tiktoken ranks file")
    return ranks


def _tiktoken_safe_chunks(text: str):
    """Cut `text` into at most 400k-char chunks, and runs of > 25k whitespace or non-whitespace
    characters every 25k characters (the places Meta's reference cuts)."""
    for start in range(0, len(text), _TIKTOKEN_MAX_CHARS):
        chunk = text[start:start + _TIKTOKEN_MAX_CHARS]
        if len(chunk) <= _TIKTOKEN_MAX_RUN:  # no run can be too long: the common case
            yield chunk
            continue
        cut, run_start, run_is_space = 0, 0, chunk[0].isspace()
        for i, char in enumerate(chunk):
            if char.isspace() != run_is_space:
                run_start, run_is_space = i, not run_is_space
            elif i > run_start and (i - run_start) % _TIKTOKEN_MAX_RUN == 0:
                yield chunk[cut:i]
                cut = i
        yield chunk[cut:]
