"""The small building blocks of the decoder: RMSNorm, projections (with optional LoRA), SwiGLU."""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ff_jax.model.config import LlamaConfig
from ff_jax.model.sharding import constrain

Axes = tuple[Optional[str], ...]

# HF's LLaMA initialiser_range: only matters when training from scratch.
_INIT_STD = 0.02


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, normalised in float32 as HF does, then cast back."""

    def __init__(self, cfg: LlamaConfig):
        self.eps = cfg.rms_norm_eps
        self.dtype = cfg.jnp_dtype
        self.scale = nnx.Param(jnp.ones((cfg.hidden_size,), cfg.jnp_param_dtype), logical_axes=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


class Projection(nnx.Module):
    """A linear map contracting the trailing `in_axes` of x into `out_axes`.

    Kernels keep heads and head_dim as separate axes ([embed, heads, head_dim] and so on), so each
    axis has its own logical name to shard by. With lora_rank > 0 a low-rank update B·A (B starts
    at zero, so the model is unchanged until trained) is added; its params are nnx.LoRAParam so
    an optimiser can train them alone.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_axes: Axes, out_axes: Axes,
                 cfg: LlamaConfig, *, rngs: nnx.Rngs, lora: bool = True):
        self.n_in = len(in_shape)
        self.dtype = cfg.jnp_dtype
        shape = (*in_shape, *out_shape)
        kernel = jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD
        self.kernel = nnx.Param(kernel.astype(cfg.jnp_param_dtype), logical_axes=(*in_axes, *out_axes))
        self.lora_scale = cfg.lora_alpha / max(cfg.lora_rank, 1)
        if cfg.lora_rank and lora:
            a = jax.random.normal(rngs.params(), (*in_shape, cfg.lora_rank), jnp.float32) / cfg.lora_rank
            self.lora_a = nnx.LoRAParam(a.astype(cfg.jnp_param_dtype), logical_axes=(*in_axes, "lora"))
            self.lora_b = nnx.LoRAParam(jnp.zeros((cfg.lora_rank, *out_shape), cfg.jnp_param_dtype),
                                        logical_axes=("lora", *out_axes))
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.tensordot(x, self.kernel[...].astype(self.dtype), axes=self.n_in)
        if self.lora_a is not None:
            low_rank = jnp.tensordot(x, self.lora_a[...].astype(self.dtype), axes=self.n_in)
            y = y + jnp.tensordot(low_rank, self.lora_b[...].astype(self.dtype), axes=1) * self.lora_scale
        return y


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = (cfg.hidden_size,), (cfg.intermediate_size,)
        self.gate = Projection(d, f, ("embed",), ("mlp",), cfg, rngs=rngs)
        self.up = Projection(d, f, ("embed",), ("mlp",), cfg, rngs=rngs)
        self.down = Projection(f, d, ("mlp",), ("embed",), cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = jax.nn.silu(self.gate(x)) * self.up(x)
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        return self.down(hidden)
