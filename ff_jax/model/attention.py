"""Grouped-query attention over packed, padded or cached sequences.

One mask rule covers every case: a query attends to a key when the key sits at the same or an
earlier slot of the row, carries the same segment id, and that id is not 0 (padding). Packed
rows (several prompts, ids 1, 2, 3, ...) therefore never see each other, right-padding is
ignored, and a KV cache is just more key slots with their own segment ids.

The rule has one extension, the shared prefix: a query may name a second segment it also reads
(`prefix_segments`, 0 = none). A ranker row "member context (id 1), candidate A (id 2),
candidate B (id 3)" gives A's and B's tokens prefix segment 1: each candidate sees the context
and itself, never the other. A shared cache (keys every row reads, none writes) is again just
more key slots, placed before the row's own; with batch 1 it is broadcast, never copied.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from ff_jax.model.config import LlamaConfig
from ff_jax.model.layers import Projection
from ff_jax.model.rope import apply_rope, inverse_frequencies
from ff_jax.model.sharding import constrain


@struct.dataclass
class KVCache:
    """Keys and values of every layer for `length` filled slots out of `k.shape[2]`.

    k, v: [layers, batch, slots, kv_heads, head_dim]; segment_ids: [batch, slots] (0 = empty);
    length: int32 scalar, the slots filled so far (the same for every row; right-padded rows
    mark their padding with segment id 0 and pass explicit positions when extending).
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    length: jax.Array

    @classmethod
    def empty(cls, cfg: LlamaConfig, batch: int, slots: int, dtype=None) -> "KVCache":
        shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or cfg.jnp_dtype
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   segment_ids=jnp.zeros((batch, slots), jnp.int32), length=jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.k.shape[2]


def attention_mask(query_slots, key_slots, query_segments, key_segments, query_prefixes=None) -> jax.Array:
    """Boolean [B, T, S]: causal by slot, within the same non-padding segment, or within the
    query's shared-prefix segment when `query_prefixes` [B, T] names one (0 = none).

    Key segments may have batch 1 (a shared cache): they broadcast over the query rows."""
    causal = key_slots[None, None, :] <= query_slots[None, :, None]
    same = query_segments[:, :, None] == key_segments[:, None, :]
    if query_prefixes is not None:
        same = same | (query_prefixes[:, :, None] == key_segments[:, None, :])
    return causal & same & (key_segments[:, None, :] != 0)


def query_tiles(length: int, key_length: int, chunk: int) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) per tile of `chunk` queries; one tile when chunk is 0.

    With causal self-attention (chunk > 0, keys = queries) a tile's queries never look past its
    last slot, so the key tiles beyond it, the upper triangle of the score matrix, are skipped.
    """
    if not chunk or length <= chunk:
        return [(0, length, key_length)]
    return [(lo, min(lo + chunk, length), min(lo + chunk, length)) for lo in range(0, length, chunk)]


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.num_groups = h // kv
        self.head_dim = hd
        self.dtype = cfg.jnp_dtype
        self.query_chunk = cfg.attention_chunk
        self.rope = (hd, cfg.rope_theta, cfg.rope_scaling)  # hashable: module attributes stay static
        self.q = Projection((d,), (h, hd), ("embed",), ("heads", "head_dim"), cfg, rngs=rngs)
        self.k = Projection((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), cfg, rngs=rngs)
        self.v = Projection((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), cfg, rngs=rngs)
        self.o = Projection((h, hd), (d,), ("heads", "head_dim"), ("embed",), cfg, rngs=rngs)

    def __call__(self, x, positions, segment_ids, cache_kv: Optional[tuple] = None, cache_meta=None,
                 prefix_segments=None, shared_kv: Optional[tuple] = None):
        """x [B, T, D] → ([B, T, D], updated (k, v) of this layer's cache or None).

        shared_kv: (k, v, segment_ids) of a read-only cache ([Bs, P, ...], Bs = 1 or B) whose P
        slots come before this row's own; the row's keys then start at slot P."""
        batch, length = x.shape[:2]
        inv_freq = inverse_frequencies(*self.rope)
        q = apply_rope(self.q(x), positions, inv_freq)
        k = apply_rope(self.k(x), positions, inv_freq)
        v = self.v(x)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        query_slots = jnp.arange(length)
        shared = None
        if shared_kv is not None:
            shared_slots = shared_kv[2].shape[1]
            query_slots = query_slots + shared_slots
            shared = (*(t.astype(self.dtype).transpose(0, 2, 1, 3) for t in shared_kv[:2]),
                      jnp.arange(shared_slots), shared_kv[2])
        if cache_kv is None:
            keys, values, key_segments, key_slots = k, v, segment_ids, query_slots
        else:
            start, key_segments = cache_meta
            zero = jnp.zeros((), jnp.int32)
            keys = jax.lax.dynamic_update_slice(cache_kv[0], k.astype(cache_kv[0].dtype), (zero, start, zero, zero))
            values = jax.lax.dynamic_update_slice(cache_kv[1], v.astype(cache_kv[1].dtype), (zero, start, zero, zero))
            key_slots = jnp.arange(keys.shape[1])
            query_slots = query_slots + start
        # Heads lead while scores are computed (queries [B, kv, groups, T, hd], keys [B, kv, S, hd]),
        # so both products are plain batched matmuls over contiguous blocks.
        q = q.reshape(batch, length, -1, self.num_groups, self.head_dim).transpose(0, 2, 3, 1, 4)
        heads_first = (0, 2, 1, 3)
        keys_h, values_h = (t.astype(self.dtype).transpose(heads_first) for t in (keys, values))
        # Self-attention without a cache is causal over the row itself: query tiles then only
        # visit the key tiles at or before them. With a cache every query sees all slots.
        chunk = self.query_chunk if cache_kv is None else 0
        tiles = []
        for lo, hi, end in query_tiles(length, keys.shape[1], chunk):
            mask_of = lambda slots, segments: attention_mask(  # noqa: E731
                query_slots[lo:hi], slots, segment_ids[:, lo:hi], segments,
                None if prefix_segments is None else prefix_segments[:, lo:hi])
            blocks = [(keys_h[:, :, :end], values_h[:, :, :end], mask_of(key_slots[:end], key_segments[:, :end]))]
            if shared is not None:
                blocks.insert(0, (shared[0], shared[1], mask_of(shared[2], shared[3])))
            tiles.append(self._attend(q[:, :, :, lo:hi], blocks))
        out = jnp.concatenate(tiles, axis=3)
        out = out.transpose(0, 3, 1, 2, 4).reshape(batch, length, -1, self.head_dim)
        new_cache = None if cache_kv is None else (keys, values)
        return self.o(out), new_cache

    def _attend(self, q, blocks):
        """q [B, kv, groups, T, hd] and key blocks (keys/values [B or 1, kv, S_i, hd], mask
        [B, T, S_i]) → [B, kv, groups, T, hd]: one softmax over the keys of every block."""
        batch, kv, groups, length, hd = q.shape
        flat_q = q.reshape(batch, kv, groups * length, hd)
        # A shared cache's keys have batch 1: jnp.einsum contracts a size-1 batch axis as a plain
        # matrix, so they are never broadcast (copied) to every row.
        logits = []
        for keys, _, mask in blocks:
            scores = jnp.einsum("bkqd,bksd->bkqs", flat_q, keys, preferred_element_type=jnp.float32)
            scores = scores.reshape(batch, kv, groups, length, -1) / jnp.sqrt(hd).astype(jnp.float32)
            # A finite floor rather than -inf: a fully masked (padding) query then gets a harmless
            # uniform average instead of NaNs that would poison gradients.
            logits.append(jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min))
        weights = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1).astype(self.dtype)
        weights = weights.reshape(batch, kv, groups * length, -1)
        out, start = 0, 0
        for keys, values, _ in blocks:
            size = keys.shape[2]
            out = out + jnp.einsum("bkqs,bksd->bkqd", weights[..., start:start + size], values)
            start += size
        return out.reshape(batch, kv, groups, length, hd)

