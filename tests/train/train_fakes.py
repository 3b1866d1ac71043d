"""Small DualTowerBatches (ff_jax.data.batches), built with the real packer.

A toy retrieval task: each item is a random token string; a member's prompt repeats a noisy piece
of its positive item, so a model can learn to match them (and losses fall when it does).
"""

import numpy as np

from ff_jax.data.batches import stack_shards
from ff_jax.data.packing import DualTowerBatcher, RowSpec

VOCAB = 512


def toy_examples(count: int, seed: int, hard_negatives: int = 1, num_items: int = 64):
    rng = np.random.default_rng(seed)
    items = [rng.integers(3, VOCAB, size=rng.integers(6, 14)).astype(np.int32) for _ in range(num_items)]
    examples = []
    for i in range(count):
        positive = int(rng.integers(num_items))
        negatives = [int(x) for x in rng.choice(num_items, size=hard_negatives, replace=False)]
        piece = items[positive][: rng.integers(4, len(items[positive]) + 1)]
        member = np.concatenate([rng.integers(3, VOCAB, size=rng.integers(1, 6)), piece]).astype(np.int32)
        examples.append({"id": f"m{i}", "member": member, "items": [items[positive]] + [items[n] for n in negatives],
                         "item_keys": np.asarray([positive + 1] + [n + 1 for n in negatives], np.int32)})
    return examples


def toy_batches(num_batches: int, num_shards: int, per_shard: int = 4, hard_negatives: int = 1,
                seed: int = 0, length: int = 32, segments: int = 3):
    """A list of batches [N=num_shards, ...]; every shard is full (no carry-over needed)."""
    examples = iter(toy_examples(num_batches * num_shards * per_shard, seed, hard_negatives))
    member_spec = RowSpec(rows=per_shard, length=length, max_segments=segments)
    item_spec = RowSpec(rows=per_shard * (1 + hard_negatives), length=length, max_segments=segments)
    batches = []
    for _ in range(num_batches):
        shards = []
        for _ in range(num_shards):
            batcher = DualTowerBatcher(per_shard, member_spec, item_spec, hard_negatives, pad_id=0)
            for _ in range(per_shard):
                assert batcher.add(next(examples))
            shards.append(batcher.build())
        batches.append(stack_shards(shards))
    return batches

