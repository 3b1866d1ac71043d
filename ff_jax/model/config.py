"""The architecture of a LLaMA-3 family decoder, as one frozen dataclass."""

import dataclasses
from typing import Optional

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """LLaMA-3.1's `rope_scaling` of type "llama3": stretches long wavelengths for long context."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: Optional[int] = None  # defaults to hidden_size // num_heads
    rope_theta: float = 500_000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_position_embeddings: int = 131_072
    # "float32" or "bfloat16": what the weights are stored in, and what matmuls run in.
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False  # recompute each block's activations in the backward pass
    scan_layers: bool = False  # one compiled block scanned over stacked weights
    # Causal attention runs in tiles of this many queries, each against the keys up to its end:
    # the upper triangle is skipped and each tile's scores stay cache-sized. 0 = one dense tile.
    attention_chunk: int = 128
    lora_rank: int = 0  # > 0 adds LoRA adapters to every attention and MLP projection
    lora_alpha: float = 16.0

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{field} must be float32, bfloat16 or float16, got {getattr(self, field)!r}")

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (without LoRA), for MFU and memory estimates."""
        d, f, h, kv, hd = (self.hidden_size, self.intermediate_size, self.num_heads,
                           self.num_kv_heads, self.head_dim)
        attn = d * h * hd * 2 + d * kv * hd * 2
        block = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * block + d + head
