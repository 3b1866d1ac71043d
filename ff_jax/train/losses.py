"""Contrastive losses for the dual encoder, each one gin line away from the others.

Every loss sees the GLOBAL batch: member and item embeddings of all B examples, whichever device
computed them. Under `jax.jit` with the batch sharded over the mesh, `member @ items.T` on these
global arrays makes XLA all-gather the item embeddings across the data-parallel devices, so the
in-batch negatives are gathered across every device and the loss on a sharded batch equals the
single-device loss on the same batch (no shard_map, no hand-written collectives).

Inputs (float32, NOT normalised: each loss normalises, Matryoshka slices first):
  member     [B, D]     one embedding per example
  positive   [B, D]     the engaged item of each example
  negatives  [B, H, D]  impressed-but-not-engaged items (H may be 0)
  negative_mask [B, H]  False where an example has fewer than H hard negatives
  example_mask  [B]     0 for filler examples (fixed shapes), which neither score nor act as negatives
  positive_key [B], negative_key [B, H]  optional int hashes of the item ids: a candidate that is
                        the same item as a member's positive is not counted as its negative
The logit scale (1/temperature) and bias come from the model's `Scoring` module, so a learned
temperature is just another parameter; a fixed one is a non-trainable variable.

Registered with gin: `train.loss = @InfoNCE()`, `@BCE()`, `@MatryoshkaInfoNCE()`.
"""

import dataclasses
from typing import Optional, Sequence

import gin
import jax
import jax.numpy as jnp
from flax import struct

# Large-but-finite: a masked logit must vanish in logsumexp without creating inf - inf = NaN.
_MASKED = -1e9


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def nested_slice(x: jax.Array, dim: int) -> jax.Array:
    """A Matryoshka embedding of size `dim`: the first `dim` coordinates, re-normalised."""
    if dim > x.shape[-1]:
        raise ValueError(f"Matryoshka dim {dim} exceeds the embedding size {x.shape[-1]}")
    return l2_normalize(x[..., :dim])


def matryoshka_dims(full: int, levels: int = 4) -> tuple[int, ...]:
    """full, 1/2, 1/4, ... (`levels` sizes, each at least 1)."""
    return tuple(max(full >> i, 1) for i in range(levels))


@struct.dataclass
class Towers:
    """One global batch of embeddings, as the losses consume it."""

    member: jax.Array
    positive: jax.Array
    negatives: jax.Array
    negative_mask: jax.Array
    example_mask: jax.Array
    positive_key: Optional[jax.Array] = None
    negative_key: Optional[jax.Array] = None
    positive_log_q: Optional[jax.Array] = None  # [B] log of each positive's sampling probability
    negative_log_q: Optional[jax.Array] = None  # [B, H]


def _candidate_logits(member, positive, negatives, towers: Towers, share_hard_negatives: bool):
    """Cosine similarities [B, C] of each member with its candidates, and the candidates' validity.

    Column b < B is example b's positive (the label of row b); the remaining columns are hard
    negatives: all B*H of them when shared (every member scores every impressed item, DPR-style),
    or only the member's own H otherwise.
    """
    batch, hard = negatives.shape[:2]
    valid_example = towers.example_mask > 0
    neg_valid = towers.negative_mask & valid_example[:, None]
    in_batch = member @ positive.T  # [B, B]: the all-gather happens here under sharding
    scores, valid = [in_batch], [jnp.broadcast_to(valid_example[None, :], in_batch.shape)]
    keys = None if towers.positive_key is None else [jnp.broadcast_to(towers.positive_key[None, :], in_batch.shape)]
    if hard and share_hard_negatives:
        scores.append(member @ negatives.reshape(batch * hard, -1).T)  # [B, B*H]
        valid.append(jnp.broadcast_to(neg_valid.reshape(1, -1), scores[-1].shape))
        if keys is not None:
            keys.append(jnp.broadcast_to(towers.negative_key.reshape(1, -1), scores[-1].shape))
    elif hard:
        scores.append(jnp.einsum("bd,bhd->bh", member, negatives))
        valid.append(neg_valid)
        if keys is not None:
            keys.append(towers.negative_key)
    scores, valid = jnp.concatenate(scores, axis=1), jnp.concatenate(valid, axis=1)
    if keys is not None:
        # Two members who engaged with the same item: that item is not a negative for either.
        same_item = jnp.concatenate(keys, axis=1) == towers.positive_key[:, None]
        label = jnp.arange(scores.shape[1])[None, :] == jnp.arange(batch)[:, None]
        valid = valid & (label | ~same_item)
    return scores, valid


def _candidate_log_q(towers: Towers, share_hard_negatives: bool) -> jax.Array:
    """log q of every candidate column of `_candidate_logits`, [1 or B, C]."""
    columns = [towers.positive_log_q[None, :]]
    hard = towers.negatives.shape[1]
    if hard and share_hard_negatives:
        columns.append(towers.negative_log_q.reshape(1, -1))
    elif hard:
        columns = [jnp.broadcast_to(columns[0], (towers.member.shape[0], columns[0].shape[1])),
                   towers.negative_log_q]
    return jnp.concatenate(columns, axis=1)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _info_nce(member, positive, negatives, towers, log_scale, share, logq: bool = False) -> tuple[jax.Array, dict]:
    cosines, valid = _candidate_logits(member, positive, negatives, towers, share)
    logits = cosines * jnp.exp(log_scale)
    if logq:
        if towers.positive_log_q is None:
            raise ValueError("logq_correction needs the batch's positive_log_q / negative_log_q (item "
                             "sampling probabilities from the dataset); this batch has none")
        # In-batch candidates arrive in proportion to their popularity: subtracting log q makes the
        # softmax estimate p(item | member) rather than p / q, which would demote popular items.
        logits = logits - _candidate_log_q(towers, share)
    logits = jnp.where(valid, logits, _MASKED)
    labels = jnp.arange(logits.shape[0])
    positive_logit = logits[labels, labels]
    per_example = jax.nn.logsumexp(logits, axis=1) - positive_logit
    weights = towers.example_mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)
    metrics = {
        "in_batch_accuracy": _masked_mean(correct, weights),
        "positive_cosine": _masked_mean(cosines[labels, labels], weights),
    }
    return _masked_mean(per_example, weights), metrics


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InfoNCE:
    """Softmax cross-entropy of each member over [all in-batch positives + hard negatives].

    temperature: initial (or fixed) softmax temperature; learn_temperature: train log(1/T).
    share_hard_negatives: every member also scores every other example's hard negatives.
    logq_correction: subtract each candidate's log sampling probability from its logit during
    training (Yi et al., RecSys 2019), so in-batch negatives do not teach the model to demote
    popular items. Needs batches with positive_log_q / negative_log_q.
    """

    temperature: float = 0.05
    learn_temperature: bool = False
    share_hard_negatives: bool = True
    logq_correction: bool = False
    # Scoring-module fields the losses share (InfoNCE is shift-invariant: no bias).
    bias: float = 0.0
    learn_bias: bool = False

    def __call__(self, towers: Towers, log_scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, dict]:
        del bias
        loss, metrics = _info_nce(l2_normalize(towers.member), l2_normalize(towers.positive),
                                  l2_normalize(towers.negatives), towers, log_scale,
                                  self.share_hard_negatives, self.logq_correction)
        return loss, {**metrics, "temperature": jnp.exp(-log_scale)}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MatryoshkaInfoNCE:
    """Weighted sum of InfoNCE over nested prefixes of the embedding (Kusupati et al., 2022).

    dims: the nested sizes (default: full, 1/2, 1/4, 1/8); weights: one per dim (default all 1).
    Metrics are reported for the full size.
    """

    dims: Optional[Sequence[int]] = None
    weights: Optional[Sequence[float]] = None
    temperature: float = 0.05
    learn_temperature: bool = False
    share_hard_negatives: bool = True
    logq_correction: bool = False  # as InfoNCE's
    bias: float = 0.0
    learn_bias: bool = False

    def resolved_dims(self, full: int) -> tuple[int, ...]:
        dims = tuple(self.dims) if self.dims else matryoshka_dims(full)
        if self.weights is not None and len(self.weights) != len(dims):
            raise ValueError(f"MatryoshkaInfoNCE.weights has {len(self.weights)} entries for {len(dims)} dims")
        return dims

    def __call__(self, towers: Towers, log_scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, dict]:
        del bias
        dims = self.resolved_dims(towers.member.shape[-1])
        weights = self.weights if self.weights is not None else (1.0,) * len(dims)
        total, metrics = 0.0, {}
        for dim, weight in zip(dims, weights):
            loss, dim_metrics = _info_nce(nested_slice(towers.member, dim), nested_slice(towers.positive, dim),
                                          nested_slice(towers.negatives, dim), towers, log_scale,
                                          self.share_hard_negatives, self.logq_correction)
            total = total + weight * loss
            metrics[f"loss_dim{dim}"] = loss
            if dim == dims[0]:
                metrics.update(dim_metrics)
        return total, {**metrics, "temperature": jnp.exp(-log_scale)}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BCE:
    """Pointwise sigmoid cross-entropy on every (member, candidate) pair: the paper's baseline.

    logit = cosine / T + bias; the positive pair is labelled 1, every other valid candidate 0.
    Summed over a member's candidates and averaged over members (as SigLIP does), so adding
    negatives does not dilute the positive's gradient. Defaults follow SigLIP's initialisation.
    """

    temperature: float = 0.1
    learn_temperature: bool = True
    share_hard_negatives: bool = True
    bias: float = -10.0
    learn_bias: bool = True

    def __call__(self, towers: Towers, log_scale: jax.Array, bias: jax.Array) -> tuple[jax.Array, dict]:
        cosines, valid = _candidate_logits(l2_normalize(towers.member), l2_normalize(towers.positive),
                                           l2_normalize(towers.negatives), towers, self.share_hard_negatives)
        logits = cosines * jnp.exp(log_scale) + bias
        labels = jnp.arange(logits.shape[0])
        is_positive = jnp.zeros(logits.shape, bool).at[labels, labels].set(True)
        # -log sigmoid(z) for positives, -log sigmoid(-z) for negatives.
        pair_loss = jax.nn.softplus(jnp.where(is_positive, -logits, logits))
        per_example = jnp.sum(jnp.where(valid, pair_loss, 0.0), axis=1)
        weights = towers.example_mask.astype(jnp.float32)
        masked = jnp.where(valid, logits, _MASKED)
        correct = (jnp.argmax(masked, axis=1) == labels).astype(jnp.float32)
        metrics = {
            "in_batch_accuracy": _masked_mean(correct, weights),
            "positive_cosine": _masked_mean(cosines[labels, labels], weights),
            "temperature": jnp.exp(-log_scale),
            "bias": bias,
        }
        return _masked_mean(per_example, weights), metrics
