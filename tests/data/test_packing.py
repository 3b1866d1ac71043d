"""Packing: segments never see each other, slots point at the right prompt, nothing is dropped,
shapes stay fixed, and the carry survives an iterator checkpoint."""

import grain
import numpy as np
import pytest

from ff_jax.data.packing import (DualTowerBatcher, OneTowerBatcher, PackedBatchIterDataset, RowPacker, RowSpec,
                                 padding_waste)
from ff_jax.data.pipeline import BucketBatchIterDataset

PAD = -7


def prompt(index: int, length: int) -> np.ndarray:
    """Token t of prompt i is i * 1000 + t: the origin of every token can be read back."""
    return (index * 1000 + np.arange(length)).astype(np.int32)


def reference_mask(segment_ids: np.ndarray) -> np.ndarray:
    """The model's rule, written out with numpy: causal, same segment, segment != 0. [R, L, L]"""
    length = segment_ids.shape[-1]
    causal = np.tril(np.ones((length, length), bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal & same & (segment_ids[:, None, :] != 0)


def segment_of_slot(tokens, segment_ids, slot, max_segments):
    row, segment = divmod(slot, max_segments)
    return tokens[row][segment_ids[row] == segment + 1]


@pytest.mark.parametrize("strategy", ["first_fit", "best_fit"])
def test_packed_segments_only_attend_within_their_own_prompt(strategy):
    rng = np.random.default_rng(0)
    spec = RowSpec(rows=6, length=64, max_segments=5, strategy=strategy)
    packer = RowPacker(spec)
    slots = {}
    for i in range(40):
        seq = prompt(i + 1, int(rng.integers(1, 40)))
        placed = packer.place([seq])
        if placed is not None:
            slots[i + 1] = (placed[0], seq)
    tokens, segment_ids, positions = packer.arrays(PAD)
    assert tokens.shape == segment_ids.shape == positions.shape == (6, 64)
    assert len(slots) > 6  # several prompts share rows

    mask = reference_mask(segment_ids)
    origin = np.where(segment_ids > 0, tokens // 1000, -1)
    q_origin, k_origin = origin[:, :, None], origin[:, None, :]
    # Every allowed pair comes from the same prompt, at an earlier or equal token of it ...
    assert np.all(~mask | ((q_origin == k_origin) & (q_origin >= 0)))
    assert np.all(~mask | (tokens[:, None, :] % 1000 <= tokens[:, :, None] % 1000))
    # ... and every causal pair inside a prompt is allowed.
    same_prompt = (q_origin == k_origin) & (q_origin >= 0)
    causal_in_prompt = same_prompt & (tokens[:, None, :] % 1000 <= tokens[:, :, None] % 1000)
    assert np.array_equal(mask, causal_in_prompt)

    for slot, seq in slots.values():
        got = segment_of_slot(tokens, segment_ids, slot, spec.max_segments)
        np.testing.assert_array_equal(got, seq)
        row, segment = divmod(slot, spec.max_segments)
        np.testing.assert_array_equal(positions[row][segment_ids[row] == segment + 1], np.arange(len(seq)))
    assert (segment_ids.max(axis=1) <= spec.max_segments).all()
    assert np.all(tokens[segment_ids == 0] == PAD)


def test_first_fit_and_best_fit_choose_different_rows():
    chosen = {}
    for strategy in ("first_fit", "best_fit"):
        packer = RowPacker(RowSpec(rows=2, length=10, max_segments=4, strategy=strategy))
        packer.place([prompt(1, 5)])  # row 0, 5 left
        packer.place([prompt(2, 6)])  # row 1, 4 left
        chosen[strategy] = packer.place([prompt(3, 4)])[0] // 4
    assert chosen == {"first_fit": 0, "best_fit": 1}  # best fit fills row 1 exactly


def test_multi_prompt_placement_is_all_or_nothing():
    packer = RowPacker(RowSpec(rows=1, length=10, max_segments=4))
    assert packer.place([prompt(1, 4), prompt(2, 4), prompt(3, 4)]) is None
    assert packer.place([prompt(4, 10)]) == [0]  # the failed attempt left the row empty


def test_padded_mode_matches_plain_padding():
    seqs = [prompt(i + 1, n) for i, n in enumerate([3, 7, 1, 5])]
    batcher = OneTowerBatcher(4, RowSpec(rows=4, length=8, max_segments=1), pad_id=PAD)
    for i, seq in enumerate(seqs):
        assert batcher.add({"tokens": seq, "id": f"x{i}"})
    batch = batcher.build()
    plain = np.full((4, 8), PAD, np.int32)
    for i, seq in enumerate(seqs):
        plain[i, : len(seq)] = seq
    np.testing.assert_array_equal(batch.tokens, plain)
    np.testing.assert_array_equal(batch.slot, [0, 1, 2, 3])
    assert padding_waste(batch) == pytest.approx(1 - 16 / 32)


def dual_examples(count, seed=0, negatives=2):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        items = [prompt(10 * i + j + 1, int(rng.integers(2, 12))) for j in range(1 + int(rng.integers(0, negatives + 1)))]
        out.append({"member": prompt(10 * i, int(rng.integers(4, 30))), "items": items,
                    "item_keys": np.arange(1, len(items) + 1, dtype=np.int32) + 100 * i, "id": f"u{i}"})
    return out


def new_dual_batcher(capacity=4, negatives=2):
    return DualTowerBatcher(capacity, RowSpec(rows=2, length=32, max_segments=3),
                            RowSpec(rows=2, length=32, max_segments=6), negatives, pad_id=PAD)


def run_all(dataset):
    return [batch for batch in dataset]


def test_dual_tower_batches_keep_every_example_once_with_fixed_shapes():
    examples = dual_examples(23)
    ds = PackedBatchIterDataset(grain.MapDataset.source(examples).to_iter_dataset(), new_dual_batcher, num_shards=2)
    batches = run_all(ds)
    seen = []
    for batch in batches:
        assert batch.member_tokens.shape == (2, 2, 32)
        assert batch.item_tokens.shape == (2, 2, 32)
        assert batch.negative_slot.shape == (2, 4, 2)
        for n in range(2):
            for b in np.flatnonzero(batch.example_mask[n]):
                member = segment_of_slot(batch.member_tokens[n], batch.member_segment_ids[n],
                                         batch.member_slot[n, b], 3)
                i = member[0] // 10000
                example = examples[i]
                np.testing.assert_array_equal(member, example["member"])
                positive = segment_of_slot(batch.item_tokens[n], batch.item_segment_ids[n],
                                           batch.positive_slot[n, b], 6)
                np.testing.assert_array_equal(positive, example["items"][0])
                assert batch.positive_key[n, b] == example["item_keys"][0]
                for j, slot in enumerate(batch.negative_slot[n, b]):
                    if j + 1 < len(example["items"]):
                        neg = segment_of_slot(batch.item_tokens[n], batch.item_segment_ids[n], slot, 6)
                        np.testing.assert_array_equal(neg, example["items"][j + 1])
                    else:
                        assert slot == -1
                seen.append(i)
    assert sorted(seen) == list(range(23))  # nothing dropped, nothing duplicated
    # The rows are too small for 4 examples per shard, so some examples were carried over.
    assert sum(int(b.example_mask.sum()) for b in batches) == 23 < 8 * len(batches)


def test_carried_examples_survive_an_iterator_checkpoint():
    examples = dual_examples(30, seed=3)
    ds = PackedBatchIterDataset(grain.MapDataset.source(examples).to_iter_dataset(), new_dual_batcher)
    expected = run_all(ds)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    assert state["carry"], "pick a checkpoint where examples are carried"
    restored = iter(ds)
    restored.set_state(state)
    rest = list(restored)
    assert len(rest) == len(expected) - 3
    for got, want in zip(rest, expected[3:]):
        for key, value in vars(want).items():  # every field of the typed batch
            np.testing.assert_array_equal(getattr(got, key), value)


def test_an_example_too_big_for_an_empty_batch_is_named():
    big = {"member": prompt(1, 20), "items": [prompt(2, 30), prompt(3, 30), prompt(4, 30)],
           "item_keys": np.array([1, 2, 3]), "id": "member-42"}
    batcher = DualTowerBatcher(2, RowSpec(1, 32, 2), RowSpec(1, 32, 4), 2, pad_id=PAD)
    with pytest.raises(ValueError, match="member-42"):
        batcher.add(big)
    with pytest.raises(ValueError, match="40 tokens"):
        RowPacker(RowSpec(1, 32)).place([prompt(1, 40)])


def test_length_buckets_use_the_smallest_boundary_that_fits():
    rng = np.random.default_rng(1)
    examples = [{"tokens": prompt(i + 1, int(rng.integers(1, 60))), "id": f"i{i}"} for i in range(37)]
    boundaries = [8, 16, 32, 64]
    ds = BucketBatchIterDataset(
        grain.MapDataset.source(examples).to_iter_dataset(), boundaries, lambda e: len(e["tokens"]),
        lambda length: OneTowerBatcher(3, RowSpec(3, length), pad_id=PAD), capacity=3, num_shards=2)
    seen = []
    for batch in ds:
        length = batch.tokens.shape[-1]
        assert length in boundaries and batch.tokens.shape[:2] == (2, 3)
        lengths = (batch.segment_ids > 0).sum(-1)[batch.example_mask > 0]
        assert lengths.max() <= length and (length == 8 or lengths.max() > boundaries[boundaries.index(length) - 1])
        seen += [i for i in batch.ids if i]
    assert sorted(seen) == sorted(e["id"] for e in examples)
