"""The records a model trains on are the same, byte for byte, as those of the text-record TFDS path
that stored every example's whole prompt (before version 2.0.0): same prompts, same ids, same order.
tests/data/golden_prompt_records.json holds that path's digests of MovieLens-100k and feed_world tiny."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ff_jax.data import tfds_builders as tb
from ff_jax.data.store import record_order

GOLDEN = json.loads((Path(__file__).parent / "golden_prompt_records.json").read_text())["datasets"]


def canonical(value):
    """Text as str and sequences as lists, whatever the source returned (TFDS gave bytes and arrays)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [canonical(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def digests(sources) -> dict:
    out = {}
    for split, source in sources.items():
        digest = hashlib.sha256()
        for i in range(len(source)):
            record = source[i]
            digest.update(json.dumps({k: canonical(record[k]) for k in sorted(record)}, sort_keys=True,
                                     ensure_ascii=False).encode() + b"\n")
        out[split] = {"records": len(source), "sha256": digest.hexdigest()}
    return out


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
