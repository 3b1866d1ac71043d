"""Every engine writes the same records: in this process, in 2 local processes, and on Ray Data (a
local Ray instance), each equal to the digests of the text-record path (record_digests.GOLDEN).
MovieLens-100k in chunks of 300 rows, so every path renders 6 item chunks and 4 member chunks."""

import pytest
from record_digests import GOLDEN, digests

from ff_jax.data import prepared as tb
from ff_jax.data.prepare_engine import PrepareConfig

pytestmark = pytest.mark.slow


def prepared_digests(data_dir, engine):
    tb.build("movielens_feed", "100k", data_dir, engine)
    return {name: digests(tb.open_prepared(data_dir, name, "100k")[0])
            for name in ("movielens_feed", "movielens_feed_corpus")}


def golden():
    return {name: GOLDEN[f"{name}/100k"] for name in ("movielens_feed", "movielens_feed_corpus")}


def test_two_local_processes_write_the_same_records(tmp_path):
    assert prepared_digests(tmp_path, PrepareConfig(workers=2, chunk=300)) == golden()


def test_ray_data_writes_the_same_records(tmp_path):
    ray = pytest.importorskip("ray")
    try:
        assert prepared_digests(tmp_path, PrepareConfig(engine="ray", workers=2, chunk=300)) == golden()
    finally:
        ray.shutdown()


def test_a_bad_engine_setting_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        PrepareConfig(engine="beam")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        PrepareConfig(workers=0)
