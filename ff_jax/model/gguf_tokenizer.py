"""The tokenizer a GGUF (llama.cpp) file describes.

GGUF keeps the vocabulary as `tokenizer.ggml.*` fields. For byte-level BPE ("gpt2" model) the
tokens are already spelled in GPT-2's byte alphabet ("Ġthe"), so a `tokenizers` BPE is built from
them and the merges as they stand; `tokenizer.ggml.pre` says how text is split before BPE.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from ff_jax.model.gguf_file import field, open_gguf
from ff_jax.model.tokenizer_core import LLAMA3_SPLIT, Tokenizer, hf_tokenizer

_CONTROL = 3  # llama.cpp token type of control tokens (<|endoftext|>, <|im_start|>, ...)
# Pre-tokenizers by `tokenizer.ggml.pre`, as llama.cpp groups them.
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact"}  # every digit alone, then GPT-2's regex
_GPT2 = {"default", "gpt2", "gpt-2"}
_LLAMA3 = {"llama-bpe", "llama3", "llama-v3"}


def load_gguf_tokenizer(path: str | Path) -> Tokenizer:
    return gguf_tokenizer(open_gguf(path), source=str(path))


def gguf_tokenizer(reader, *, source: str) -> Tokenizer:
    """Build the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata."""
    kind = field(reader, "tokenizer.ggml.model", source=source)
    if kind != "gpt2":
        raise ValueError(f"{source}: tokenizer.ggml.model={kind!r} is not supported; only byte-level "
                         "BPE ('gpt2', as in SmolLM2 and LLaMA-3 GGUFs) is")
    pre = field(reader, "tokenizer.ggml.pre", "default", source=source)
    tokens = field(reader, "tokenizer.ggml.tokens", source=source)
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", source=source)]

    if pre in _DIGITS_THEN_GPT2:
        splitter = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif pre in _GPT2:
        splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre in _LLAMA3:
        splitter = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        supported = sorted(_DIGITS_THEN_GPT2 | _GPT2 | _LLAMA3)
        raise ValueError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported (supported: {supported})")

    # LLaMA-3's vocabulary comes from tiktoken, which emits a whole pre-token when it is in the
    # vocabulary even if the merges would not build it; `ignore_merges` reproduces that.
    model = BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False,
                ignore_merges=pre in _LLAMA3)
    hf = HFTokenizer(model)
    hf.pre_tokenizer = splitter
    hf.decoder = decoders.ByteLevel()
    types = field(reader, "tokenizer.ggml.token_type", [], source=source)
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind == _CONTROL]
    hf.add_special_tokens(control)  # already in the vocabulary: ids do not change

    def token_id(key):
        value = reader.fields.get(key)
        return None if value is None else int(value.contents())

    return hf_tokenizer(hf, source=source, bos_id=token_id("tokenizer.ggml.bos_token_id"),
                        eos_id=token_id("tokenizer.ggml.eos_token_id"),
                        pad_id=token_id("tokenizer.ggml.padding_token_id"))
