"""GGUF (llama.cpp) LLaMA-architecture files: config, weights and tokenizer.

Weights: llama.cpp stores [out, in] matrices (HF's orientation) row-quantised, so a block of rows
dequantises on its own; the tensors are presented under HF names to hf_checkpoint's streaming
loader. llama.cpp's converter permutes the rows of q/k within each head from HF's rotate_half
order to interleaved pairs; we apply the inverse permutation.

Tokenizer: ff_jax.model.gguf_tokenizer; reading the file: ff_jax.model.gguf_file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ff_jax.model.config import LlamaConfig, RopeScaling
from ff_jax.model.gguf_file import REQUIRED, field, open_gguf
from ff_jax.model.gguf_tokenizer import gguf_tokenizer
from ff_jax.model.hf_checkpoint import Range, load_into_model
from ff_jax.model.llama import Llama
from ff_jax.model.rope import inverse_frequencies
from ff_jax.model.sharding import DEFAULT_RULES, Rules
from ff_jax.model.tokenizer_core import Tokenizer

# ----------------------------------------------------------------------------- weights

_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    parts = gguf_name.split(".")  # blk.{i}.{kind}.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.weight"
    return gguf_name  # unknown: reported by the loader as not belonging to a LLaMA


class GGUFSource:
    """GGUF tensors under HF names, in HF layout, dequantised to float32 a block of rows at a time."""

    def __init__(self, reader, cfg: LlamaConfig, description: str):
        self.description = description
        self._tensors = {_hf_name(t.name): t for t in reader.tensors}
        self.names = set(self._tensors)
        self._cfg = cfg

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(self._tensors[name].shape))  # GGUF lists dims innermost first

    def read(self, name: str, ranges: tuple[Range, ...]) -> np.ndarray:
        import gguf  # see ff_jax.model.gguf_file.open_gguf

        tensor = self._tensors[name]
        (r0, r1), columns = ranges[0], ranges[1:]
        # np.asarray drops the memmap subclass, whose per-view bookkeeping dominates dequantising.
        rows = gguf.quants.dequantize(np.asarray(tensor.data[r0:r1]), tensor.tensor_type).astype(np.float32)
        rows = rows.reshape((r1 - r0, *self.shape(name)[1:]))
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            rows = _unpermute_rows(rows, self._cfg.head_dim)
        return rows[(slice(None), *(slice(a, b) for a, b in columns))]


def _unpermute_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k permutation, for whole heads: within each head, row 2j+p of
    the GGUF (interleaved pairs) is row p*head_dim/2+j of HF's rotate_half layout."""
    heads = rows.shape[0] // head_dim
    return rows.reshape(heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def config_from_gguf(reader, source: str = "GGUF file", **overrides) -> LlamaConfig:
    arch = field(reader, "general.architecture", source=source)
    if arch != "llama":
        raise ValueError(f"{source}: GGUF architecture {arch!r} is not supported; only 'llama' "
                         "(LLaMA-2/3, SmolLM2, ...) files load")
    if int(field(reader, "split.count", 1, source=source)) > 1:
        raise ValueError(f"{source}: split GGUF files are not supported; merge them with llama-gguf-split")
    scaling_type = field(reader, "llama.rope.scaling.type", "none", source=source)
    if scaling_type not in ("none", "llama3"):
        raise ValueError(f"{source}: llama.rope.scaling.type={scaling_type!r} is not supported")

    def meta(key, default=REQUIRED):
        return field(reader, f"llama.{key}", default, source=source)

    heads = int(meta("attention.head_count"))
    hidden = int(meta("embedding_length"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = meta("vocab_size", None) or len(field(reader, "tokenizer.ggml.tokens", source=source))
    head_dim = int(meta("attention.key_length", 0) or meta("rope.dimension_count", 0) or hidden // heads)
    theta = float(meta("rope.freq_base", 10_000.0))
    fields = dict(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")), num_heads=heads,
        num_kv_heads=int(meta("attention.head_count_kv", heads)), head_dim=head_dim, rope_theta=theta,
        rope_scaling=_rope_scaling(reader, head_dim, theta, source) if "rope_freqs.weight" in tensor_names else None,
        rms_norm_eps=float(meta("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensor_names,
        max_position_embeddings=int(meta("context_length", 2048)),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def _rope_scaling(reader, head_dim: int, theta: float, source: str) -> RopeScaling:
    """LLaMA-3.1-style GGUFs store the llama3 rope scaling as per-frequency divisors
    (`rope_freqs.weight`). Recover its parameters: the largest divisor is `factor`; Meta's
    low/high frequency factors (1, 4) and original context are checked against every divisor."""
    import gguf  # see ff_jax.model.gguf_file.open_gguf

    tensor = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    divisors = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float64).ravel()
    base = inverse_frequencies(head_dim, theta, None)
    original = int(field(reader, "llama.rope.scaling.original_context_length", 8192, source=source))
    candidate = RopeScaling(factor=float(divisors.max()), low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=original)
    if not np.allclose(base / divisors, inverse_frequencies(head_dim, theta, candidate), rtol=1e-4):
        raise ValueError(f"{source}: rope_freqs.weight is not a llama3 rope scaling ff_jax can reproduce")
    return candidate


def load_gguf(path: str | Path, *, mesh=None, rules: Rules = DEFAULT_RULES,
              **config_overrides) -> tuple[Llama, Tokenizer]:
    """A LLaMA-architecture GGUF file as (Llama, Tokenizer); weights dequantised to float32 and
    cast to the config's param dtype."""
    reader = open_gguf(path)
    cfg = config_from_gguf(reader, str(path), **config_overrides)
    model = load_into_model(cfg, GGUFSource(reader, cfg, str(path)), mesh=mesh, rules=rules,
                            ignore=("rope_freqs.weight",), truncate="num_layers" in config_overrides)
    return model, gguf_tokenizer(reader, source=str(path))
