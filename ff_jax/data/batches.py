"""The batches that cross package boundaries, as typed pytrees: the contract between the data
pipeline (producer) and training, embedding and evaluation (consumers). docs/contracts.md explains
them in tables; this module is the authority.

Shapes, with N = data-parallel shards fed by this process, B/N = examples per shard, R = rows per
shard, L = tokens per row, S = prompts per row (segments), H = hard negatives per example:

- Prompts are packed into rows [N, R, L]. `segment_ids` number the prompts of a row 1..S
  (0 = padding); `positions` restart at 0 in every prompt. The model's one mask rule (same
  non-zero segment id, causal) keeps prompts apart.
- An example addresses its prompt by slot `row * S + segment_id - 1`, counted within its shard,
  so pooling and the gather back to examples never leave the shard.
- Filler examples (a shard batch not full) have `example_mask` 0 and point at slot 0.
- One `Batcher.build()` (ff_jax.data.packing) returns one shard: the same type without the N
  axis; `stack_shards` adds it.

Fields that live on the host only (`EmbeddingBatch.ids`) are static pytree fields
(`pytree_node=False`): `device_part` drops them before a batch is put on devices, so a jitted
function never sees them (and never retraces on them).

Optional fields default to None: a None field is an empty pytree, so it costs nothing on device
and a consumer checks `is not None`. New optional fields go last (`dataclasses` requires it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, TypeVar

import numpy as np
from flax import struct

Array = Any  # numpy on the host, jax.Array once on devices


@struct.dataclass
class DualTowerBatch:
    """One training batch of the dual encoder (ff_jax.data.pipeline.train_batches → the train
    step and `DualEncoder.towers`). Member and item prompts are packed into separate rows, each
    with its own R and S (`FeedData.segments`)."""

    member_tokens: Array  # int32 [N, Rm, L]: member prompts, packed
    member_segment_ids: Array  # int32 [N, Rm, L]: 1..Sm per prompt of a row, 0 = padding
    member_positions: Array  # int32 [N, Rm, L]: 0.. within each prompt
    member_slot: Array  # int32 [N, B/N]: slot of example b's member prompt (row * Sm + segment - 1)
    item_tokens: Array  # int32 [N, Ri, L]: positive and hard-negative item prompts, packed
    item_segment_ids: Array  # int32 [N, Ri, L]
    item_positions: Array  # int32 [N, Ri, L]
    positive_slot: Array  # int32 [N, B/N]: slot of example b's positive item among the item rows
    negative_slot: Array  # int32 [N, B/N, H]: slots of its hard negatives; -1 = none (fewer than H)
    example_mask: Array  # float32 [N, B/N]: 1 = real example, 0 = filler
    # Item-id hashes (ff_jax.data.pipeline.item_key, 0 = none): the loss masks an in-batch
    # negative that is the same item as an example's positive.
    positive_key: Optional[Array] = None  # int32 [N, B/N]
    negative_key: Optional[Array] = None  # int32 [N, B/N, H]
    # log q of each item: its share of the training positives (ff_jax.data.pipeline.LogQ),
    # for the loss's logQ correction of in-batch negatives; None when the pipeline was given no table.
    positive_log_q: Optional[Array] = None  # float32 [N, B/N]
    negative_log_q: Optional[Array] = None  # float32 [N, B/N, H] (0 where there is no negative)


@struct.dataclass
class EmbeddingBatch:
    """One-tower batch: member or item prompts to embed (ff_jax.data.pipeline.embedding_batches →
    `DualEncoder.encode`, the embed steps, ff_jax.retrieval.embed_job, validation)."""

    tokens: Array  # int32 [N, R, L]: prompts, packed
    segment_ids: Array  # int32 [N, R, L]: 1..S per prompt of a row, 0 = padding
    positions: Array  # int32 [N, R, L]: 0.. within each prompt
    slot: Array  # int32 [N, B/N]: slot of example b's prompt (row * S + segment - 1)
    example_mask: Array  # float32 [N, B/N]: 1 = real example, 0 = filler
    # Host only: the user or item id of each example, N * B/N strings in example order ("" for a
    # filler). Embeddings [N * B/N, E] come back in the same order.
    ids: Optional[list[str]] = struct.field(pytree_node=False, default=None)


@struct.dataclass
class RankerBatch:
    """One training batch of the cross-encoder ranker (ff_jax.rank.data.RankerData → the train
    step and ff_jax.rank.train's objective). A row holds one member: its context (segment 1), then
    its K candidates (segments 2..K+1), each seeing the context and itself only: candidate tokens
    name the context in `prefix_segments`, the model's shared-prefix extension of the mask rule."""

    tokens: Array  # int32 [N, R, L]: context then candidates (item prompt + question), right-padded
    segment_ids: Array  # int32 [N, R, L]: 1 = context, 2..K+1 = candidate, 0 = padding
    positions: Array  # int32 [N, R, L]: 0.. through the context; each candidate continues from its length
    prefix_segments: Array  # int32 [N, R, L]: 1 on candidate tokens (they read the context), else 0
    last: Array  # int32 [N, R, K]: slot of each candidate's last token, where its score is read
    labels: Array  # float32 [N, R, K]: 1 = the member engaged with it, 0 = not
    candidate_mask: Array  # float32 [N, R, K]: 1 = a real candidate, 0 = none there
    example_mask: Array  # float32 [N, R]: 1 = a real member, 0 = filler
    prior: Array  # float32 [N, R, K]: RankerData.retrieval_prior x the retriever's cosine (0 without)


Batch = TypeVar("Batch", DualTowerBatch, EmbeddingBatch, RankerBatch)


def host_fields(batch_type: type) -> list[str]:
    """Names of the fields that never go to devices."""
    return [f.name for f in dataclasses.fields(batch_type) if not f.metadata.get("pytree_node", True)]


def device_part(batch: Batch) -> Batch:
    """The batch without its host-only fields (what jitted functions and shardings see)."""
    return batch.replace(**{name: None for name in host_fields(type(batch))})


def stack_shards(shards: Sequence[Batch]) -> Batch:
    """Shard batches (one per `Batcher.build()`) → one batch with a leading shard axis N; host
    lists are concatenated."""
    out = {}
    for field in dataclasses.fields(shards[0]):
        values = [getattr(shard, field.name) for shard in shards]
        if values[0] is None:
            out[field.name] = None
        elif field.name in host_fields(type(shards[0])):
            out[field.name] = [v for value in values for v in value]
        else:
            out[field.name] = np.stack(values)
    return type(shards[0])(**out)


def segment_id_arrays(batch: Batch) -> list[Array]:
    """The segment-id arrays of every tower (0 = padding), for padding and token counts."""
    if isinstance(batch, DualTowerBatch):
        return [batch.member_segment_ids, batch.item_segment_ids]
    return [batch.segment_ids]
