"""The LLaMA-3 decoder as a Flax NNX module."""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ff_jax.model.attention import Attention, KVCache
from ff_jax.model.config import LlamaConfig
from ff_jax.model.layers import Projection, RMSNorm, SwiGLU
from ff_jax.model.sharding import DEFAULT_RULES, Rules, constrain, create_sharded

_ACTIVATION = ("batch", "length", "embed")


@struct.dataclass
class ModelOutput:
    logits: Optional[jax.Array]  # [B, T, vocab] float32, None when compute_logits=False
    hidden: jax.Array  # [B, T, D] last hidden state, after the final norm
    cache: Optional[KVCache]


class Block(nnx.Module):
    """Pre-norm attention and SwiGLU, each added back to the residual stream."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg)
        self.mlp = SwiGLU(cfg, rngs=rngs)

    def __call__(self, x, positions, segment_ids, cache_kv=None, cache_meta=None, prefix_segments=None,
                 shared_kv=None):
        attended, new_kv = self.attn(self.attn_norm(x), positions, segment_ids, cache_kv, cache_meta,
                                     prefix_segments, shared_kv)
        x = constrain(x + attended, _ACTIVATION)
        x = constrain(x + self.mlp(self.mlp_norm(x)), _ACTIVATION)
        return x, new_kv


class Llama(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        embedding = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size)) * 0.02
        self.embed = _Embed(embedding.astype(cfg.jnp_param_dtype))
        if cfg.scan_layers:
            self.layers = _stacked_blocks(cfg, rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Projection((cfg.hidden_size,), (cfg.vocab_size,), ("embed",), ("vocab",), cfg,
                                      rngs=rngs, lora=False)  # adapters on attention and MLP only

    def __call__(self, tokens: jax.Array, *, positions: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
                 compute_logits: bool = True, prefix_segments: Optional[jax.Array] = None,
                 shared_cache: Optional[KVCache] = None) -> ModelOutput:
        """Runs tokens [B, T]; docs/contracts.md ("Model inputs") for positions, segments and the caches.

        prefix_segments [B, T]: a second segment each token reads (its shared prefix; 0 = none).
        shared_cache: a prefilled KVCache every row reads and none writes (batch 1: broadcast to
        all rows, never copied); `cache` must then be None.
        """
        cfg = self.config
        batch, length = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if shared_cache is not None and cache is not None:
            raise ValueError("pass a cache to extend or a shared_cache to read, not both")
        start = jnp.zeros((), jnp.int32) if cache is None else cache.length
        if shared_cache is not None:
            start = shared_cache.length
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = constrain(self.embed(tokens).astype(cfg.jnp_dtype), _ACTIVATION)

        cache_meta = None
        if cache is not None:
            key_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32),
                                                        (jnp.zeros((), jnp.int32), start))
            cache_meta = (start, key_segments)

        def run_block(block, x, kv, shared_kv=None):
            if shared_kv is not None:
                shared_kv = (*shared_kv, shared_cache.segment_ids)
            return block(x, positions, segment_ids, kv, cache_meta, prefix_segments, shared_kv)

        if cfg.remat:
            run_block = nnx.remat(run_block)

        new_cache = None
        if cfg.scan_layers:
            if shared_cache is not None:
                scan = nnx.scan(lambda blk, h, skv: run_block(blk, h, None, skv)[0], in_axes=(0, nnx.Carry, 0),
                                out_axes=nnx.Carry)
                x = scan(self.layers, x, (shared_cache.k, shared_cache.v))
            elif cache is None:
                scan = nnx.scan(lambda blk, h: run_block(blk, h, None)[0], in_axes=(0, nnx.Carry),
                                out_axes=nnx.Carry)
                x = scan(self.layers, x)
            else:
                scan = nnx.scan(lambda blk, h, kv: run_block(blk, h, kv), in_axes=(0, nnx.Carry, 0),
                                out_axes=(nnx.Carry, 0))
                x, (k, v) = scan(self.layers, x, (cache.k, cache.v))
                new_cache = KVCache(k=k, v=v, segment_ids=cache_meta[1], length=start + length)
        else:
            new_k, new_v = [], []
            for i, block in enumerate(self.layers):
                kv = None if cache is None else (cache.k[i], cache.v[i])
                shared_kv = None if shared_cache is None else (shared_cache.k[i], shared_cache.v[i])
                x, kv = run_block(block, x, kv, shared_kv)
                if kv is not None:
                    new_k.append(kv[0])
                    new_v.append(kv[1])
            if cache is not None:
                new_cache = KVCache(k=jnp.stack(new_k), v=jnp.stack(new_v), segment_ids=cache_meta[1],
                                    length=start + length)

        hidden = self.final_norm(x)
        logits = self.logits(hidden) if compute_logits else None
        return ModelOutput(logits=logits, hidden=hidden, cache=new_cache)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Vocabulary logits (float32) for hidden states [..., D]."""
        if self.lm_head is None:
            table = self.embed.embedding[...].astype(hidden.dtype)
            out = jnp.einsum("...d,vd->...v", hidden, table, preferred_element_type=jnp.float32)
        else:
            out = self.lm_head(hidden).astype(jnp.float32)
        return constrain(out, ("batch", "length", "vocab"))


class _Embed(nnx.Module):
    """Token embedding table [vocab, embed]."""

    def __init__(self, table: jax.Array):
        self.embedding = nnx.Param(table, logical_axes=("vocab", "embed"))

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens, axis=0)


def _stacked_blocks(cfg: LlamaConfig, rngs: nnx.Rngs) -> Block:
    """num_layers Blocks as one Block whose params carry a leading layer axis (for nnx.scan)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return Block(cfg, rngs=rngs)

    stacked = create(rngs)
    # Name the new leading axis so the sharding rules see ("layers", ...).
    for _, variable in nnx.iter_graph(stacked):
        if isinstance(variable, nnx.Variable) and "logical_axes" in variable.get_metadata():
            axes = variable.get_metadata()["logical_axes"]
            if len(axes) < variable.get_value().ndim:
                variable.set_metadata(logical_axes=("layers", *axes))
    return stacked


def create_sharded_model(cfg: LlamaConfig, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES,
                         seed: int = 0) -> Llama:
    """A randomly initialised Llama with sharded parameters (ff_jax.model.sharding.create_sharded)."""
    return create_sharded(lambda: Llama(cfg, rngs=nnx.Rngs(seed)), mesh, rules)
