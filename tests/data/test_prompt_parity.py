"""The records a model trains on are the same, byte for byte, as those of the text-record TFDS path
that stored every example's whole prompt (before version 2.0.0): same prompts, same ids, same order.
tests/data/golden_prompt_records.json holds that path's digests of MovieLens-100k and feed_world tiny."""

import pytest
from record_digests import GOLDEN, digests

from ff_jax.data import prepared as tb
from ff_jax.data.store import record_order


@pytest.mark.slow
@pytest.mark.parametrize("name,config", [("movielens_feed", "100k"), ("feed_world", "tiny")])
def test_records_equal_the_text_records_of_the_tfds_path(tmp_path, name, config):
    tb.build(name, config, tmp_path)
    for dataset in (name, f"{name}_corpus"):
        assert digests(tb.open_prepared(tmp_path, dataset, config)[0]) == GOLDEN[f"{dataset}/{config}"], dataset


def test_record_order_is_tfds_key_hash_order():
    """The stored order reproduces TFDS's writer: keys f"{i:09d}" sorted by its salted md5 Hasher."""
    from tensorflow_datasets.core import hashing

    for salt in ("train", "corpus"):
        hasher = hashing.Hasher(salt)
        expected = sorted(range(500), key=lambda i: hasher.hash_key(f"{i:09d}"))
        assert record_order(500, salt).tolist() == expected
