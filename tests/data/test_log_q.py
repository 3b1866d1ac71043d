"""Item sampling probabilities for the logQ correction: the table, and how batches carry it."""

import numpy as np

from ff_jax.data.packing import DualTowerBatcher, RowSpec
from ff_jax.data.pipeline import LogQ


def test_log_q_is_the_add_one_smoothed_share_of_training_positives():
    log_q = LogQ({"a": 3, "b": 1}, corpus_size=5)  # 4 positives + 5 items of smoothing
    assert np.isclose(log_q("a"), np.log(4 / 9)) and np.isclose(log_q("b"), np.log(2 / 9))
    assert np.isclose(log_q("never_a_positive"), np.log(1 / 9))
    assert np.isclose(sum(np.exp(log_q(i)) for i in ["a", "b", "c", "d", "e"]), 1.0)


def test_batches_carry_each_examples_log_q_in_example_order():
    batcher = DualTowerBatcher(3, RowSpec(2, 32, 4), RowSpec(2, 32, 8), num_negatives=2, pad_id=0, log_q=True)
    examples = [([1.0, 2.0, 3.0], 3), ([4.0], 1), ([5.0, 6.0], 2)]  # (log q of positive + negatives, items)
    for i, (values, n) in enumerate(examples):
        assert batcher.add({"id": str(i), "member": np.array([7, 8], np.int32),
                            "items": [np.array([9, 10 + k], np.int32) for k in range(n)],
                            "item_keys": np.arange(1, n + 1, dtype=np.int32),
                            "item_log_q": np.asarray(values, np.float32)})
    batch = batcher.build()
    np.testing.assert_array_equal(batch.positive_log_q, [1.0, 4.0, 5.0])
    np.testing.assert_array_equal(batch.negative_log_q, [[2.0, 3.0], [0.0, 0.0], [6.0, 0.0]])
    np.testing.assert_array_equal(batch.negative_slot >= 0, [[True, True], [False, False], [True, False]])


def test_batches_without_a_table_have_no_log_q_fields():
    batcher = DualTowerBatcher(1, RowSpec(1, 32, 4), RowSpec(1, 32, 4), num_negatives=0, pad_id=0)
    batcher.add({"id": "0", "member": np.array([7], np.int32), "items": [np.array([9], np.int32)],
                 "item_keys": np.array([1], np.int32)})
    batch = batcher.build()
    assert batch.positive_log_q is None and batch.negative_log_q is None


def test_an_empty_filler_shard_still_carries_log_q_so_shards_stack():
    empty = DualTowerBatcher(2, RowSpec(1, 32, 4), RowSpec(1, 32, 4), num_negatives=1, pad_id=0, log_q=True).build()
    np.testing.assert_array_equal(empty.positive_log_q, [0.0, 0.0])
    assert empty.negative_log_q.shape == (2, 1)
