"""A shared-backbone dual encoder: one LLaMA-3 encodes members and items, pooled to one vector each.

Prompts arrive packed (ff_jax.data.batches, docs/contracts.md): rows [N, R, L] of token ids
with segment ids 1..S (0 = padding), and each example names the slot `row * S + segment_id - 1`
of its prompt within its shard. Pooling therefore works row by row with a one-hot over the S
segments of a row — no scatter, and it shards along rows like the backbone does.

Embeddings leave `encode` un-normalised (after the optional projection head); the losses and
`embed` L2-normalise, after slicing to a Matryoshka size when one is asked for.
"""

import dataclasses
from typing import Optional

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from ff_jax.data.batches import DualTowerBatch
from ff_jax.model import Llama
from ff_jax.model.sharding import constrain
from ff_jax.train.losses import Towers, l2_normalize, nested_slice

POOLINGS = ("mean", "last", "last_n")


class HeadParam(nnx.Param):
    """Parameters outside the backbone (projection head, temperature, bias): trained even with LoRA."""


class Constant(nnx.Variable):
    """A value kept in the model state (and checkpoints) that no optimiser touches."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """How hidden states become one embedding per prompt.

    pooling: "mean" over each prompt's tokens (the paper's default), "last" token, or the mean of
    the "last_n" tokens. projection_dim > 0 adds a head mapping hidden → projection_dim (a linear
    map, or an MLP through projection_hidden units when > 0): the learned down-projection of the
    dimensionality ablation.
    """

    pooling: str = "mean"
    last_n: int = 0
    projection_dim: int = 0
    projection_hidden: int = 0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"EncoderConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "last_n" and self.last_n < 1:
            raise ValueError("EncoderConfig.pooling='last_n' needs EncoderConfig.last_n >= 1")


def pool(hidden: jax.Array, segment_ids: jax.Array, segments_per_row: int, pooling: str = "mean",
         last_n: int = 0) -> jax.Array:
    """Pools hidden [R, L, D] into [R * S, D]; slot r*S + s holds segment s+1 of row r.

    Each token's rank within its segment is counted from the segment ids (a cumulative sum), so
    positions need not be consulted. Empty slots pool to zeros.
    """
    ids = jnp.arange(1, segments_per_row + 1, dtype=segment_ids.dtype)
    member = (segment_ids[..., None] == ids).astype(jnp.float32)  # [R, L, S]
    if pooling == "mean":
        weights = member
    else:
        n = 1 if pooling == "last" else last_n
        count = jnp.sum(member, axis=1, keepdims=True)  # [R, 1, S]
        rank_from_end = count - jnp.cumsum(member, axis=1)  # 0 for a segment's last token
        weights = member * (rank_from_end < n)
    summed = jnp.einsum("rls,rld->rsd", weights, hidden.astype(jnp.float32))
    pooled = summed / jnp.maximum(jnp.sum(weights, axis=1), 1.0)[..., None]
    return pooled.reshape(-1, hidden.shape[-1])


def gather_slots(pooled: jax.Array, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    """pooled [N, R*S, D], slots [N, ...] (-1 = none) → embeddings [N, ..., D] and a validity mask."""
    valid = slots >= 0
    flat = jnp.maximum(slots, 0).reshape(slots.shape[0], -1)
    picked = jnp.take_along_axis(pooled, flat[..., None], axis=1)
    return picked.reshape(*slots.shape, pooled.shape[-1]), valid


class ProjectionHead(nnx.Module):
    """hidden → out_dim, through an optional SiLU MLP layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
        dims = [in_dim, hidden_dim, out_dim] if hidden_dim else [in_dim, out_dim]
        self.kernels = nnx.List([
            HeadParam(jax.random.normal(rngs.params(), (a, b)) / jnp.sqrt(a), logical_axes=("embed", None))
            for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nnx.List([HeadParam(jnp.zeros((b,)), logical_axes=(None,)) for b in dims[1:]])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            if i:
                x = jax.nn.silu(x)
            x = x @ kernel[...] + bias[...]
        return x


class Scoring(nnx.Module):
    """log(1/temperature) and a logit bias: learned (HeadParam) or fixed (Constant)."""

    def __init__(self, temperature: float, learn_temperature: bool, bias: float = 0.0, learn_bias: bool = False):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        scale_type = HeadParam if learn_temperature else Constant
        bias_type = HeadParam if learn_bias else Constant
        self.log_scale = scale_type(jnp.asarray(-jnp.log(temperature), jnp.float32))
        self.bias = bias_type(jnp.asarray(bias, jnp.float32))

    @classmethod
    def for_loss(cls, loss) -> "Scoring":
        return cls(loss.temperature, loss.learn_temperature, loss.bias, loss.learn_bias)


class DualEncoder(nnx.Module):
    def __init__(self, backbone: Llama, config: EncoderConfig = EncoderConfig(),
                 scoring: Optional[Scoring] = None, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        self.head = (ProjectionHead(hidden, config.projection_dim, config.projection_hidden, rngs=rngs)
                     if config.projection_dim else None)
        self.scoring = scoring if scoring is not None else Scoring(0.05, False)

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim or self.backbone.config.hidden_size

    def _hidden(self, tokens, segment_ids, positions) -> jax.Array:
        """tokens/segment_ids/positions [N, R, L] → the backbone's last hidden states [N, R, L, D]."""
        shards, rows, length = tokens.shape
        flat = lambda x: x.reshape(shards * rows, length)
        hidden = self.backbone(flat(tokens), positions=flat(positions), segment_ids=flat(segment_ids),
                               compute_logits=False).hidden
        return hidden.reshape(shards, rows, length, -1)

    def encode_rows(self, tokens, segment_ids, positions, segments_per_row: int) -> jax.Array:
        """tokens/segment_ids/positions [N, R, L] → un-normalised pooled embeddings [N, R*S, E]."""
        return self._pool_rows(self._hidden(tokens, segment_ids, positions), segment_ids, segments_per_row)

    def _pool_rows(self, hidden, segment_ids, segments_per_row: int) -> jax.Array:
        """hidden [N, R, L, D] → pooled [N, R*S, E] (projection head applied)."""
        shards, rows, length = segment_ids.shape
        pooled = pool(hidden.reshape(shards * rows, length, -1), segment_ids.reshape(shards * rows, length),
                      segments_per_row, self.config.pooling, self.config.last_n)
        if self.head is not None:
            pooled = self.head(pooled)
        # Whole embeddings per shard: the slot gather then stays local to each batch shard.
        return constrain(pooled.reshape(shards, rows * segments_per_row, -1), ("batch", None, None))

    def encode(self, tokens, segment_ids, positions, slot, segments_per_row: int) -> jax.Array:
        """One tower (embedding/eval batches): un-normalised embeddings [N * B/N, E] of each slot."""
        pooled = self.encode_rows(tokens, segment_ids, positions, segments_per_row)
        picked, _ = gather_slots(pooled, slot)
        return picked.reshape(-1, picked.shape[-1])

    def embed(self, tokens, segment_ids, positions, slot, segments_per_row: int,
              dim: Optional[int] = None) -> jax.Array:
        """L2-normalised embeddings, sliced to a Matryoshka size `dim` when given."""
        raw = self.encode(tokens, segment_ids, positions, slot, segments_per_row)
        return l2_normalize(raw) if dim is None else nested_slice(raw, dim)

    def _both_towers(self, batch: DualTowerBatch, member_segments: int, item_segments: int):
        """(member [N, Rm*Sm, E], item [N, Ri*Si, E]) pooled embeddings. Rows of one length go through
        the backbone in one call: one layer scan and its backward instead of two, so XLA keeps one
        gradient accumulator per weight rather than one per tower (about 0.5 GiB less for SmolLM2)."""
        if batch.member_tokens.shape[-1] != batch.item_tokens.shape[-1]:  # bucketed: lengths differ
            return (self.encode_rows(batch.member_tokens, batch.member_segment_ids, batch.member_positions,
                                     member_segments),
                    self.encode_rows(batch.item_tokens, batch.item_segment_ids, batch.item_positions,
                                     item_segments))
        split = batch.member_tokens.shape[1]
        both = lambda m, i: jnp.concatenate([m, i], axis=1)  # noqa: E731  rows of each shard stay together
        hidden = self._hidden(both(batch.member_tokens, batch.item_tokens),
                              both(batch.member_segment_ids, batch.item_segment_ids),
                              both(batch.member_positions, batch.item_positions))
        return (self._pool_rows(hidden[:, :split], batch.member_segment_ids, member_segments),
                self._pool_rows(hidden[:, split:], batch.item_segment_ids, item_segments))

    def towers(self, batch: DualTowerBatch, member_segments: int, item_segments: int) -> Towers:
        """Both towers of a training batch, flattened to the global batch.

        member_segments / item_segments: the S (prompts per row) each tower was packed with.
        """
        members, items = self._both_towers(batch, member_segments, item_segments)
        member, _ = gather_slots(members, batch.member_slot)
        positive, _ = gather_slots(items, batch.positive_slot)
        negatives, negative_mask = gather_slots(items, batch.negative_slot)
        dim = member.shape[-1]
        size = member.shape[0] * member.shape[1]  # explicit: with H = 0 a -1 could not be inferred
        hard = batch.negative_slot.shape[-1]
        keys = {}
        if batch.positive_key is not None:  # item-id hashes: mask in-batch duplicates of a positive
            keys = dict(positive_key=batch.positive_key.reshape(size),
                        negative_key=batch.negative_key.reshape(size, hard))
        if batch.positive_log_q is not None:  # item sampling probabilities: the logQ correction
            keys.update(positive_log_q=batch.positive_log_q.reshape(size),
                        negative_log_q=batch.negative_log_q.reshape(size, hard))
        return Towers(member=member.reshape(size, dim), positive=positive.reshape(size, dim),
                      negatives=negatives.reshape(size, hard, dim), negative_mask=negative_mask.reshape(size, hard),
                      example_mask=batch.example_mask.reshape(size), **keys)
