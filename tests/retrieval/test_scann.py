"""ScaNN index: recall against exact kNN, save/load identity, add() freshness, retraining."""

import numpy as np
import pytest

from ff_jax.retrieval import ExactIndex, IndexFormatError, ScannConfig, ScannIndex, load_index
from ff_jax.retrieval.metrics import ann_recall

N, D = 8000, 32
GENEROUS = ScannConfig(leaves_fraction=0.5, reorder_k=400)


def clustered(n, seed, clusters=40):
    """Unit vectors around fixed cluster centres (the same centres for every seed)."""
    centres = np.random.default_rng(123).standard_normal((clusters, D))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, D))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return clustered(N, 1), clustered(64, 2), np.array([f"post{i}" for i in range(N)])


@pytest.fixture(scope="module")
def exact(data):
    corpus, _, ids = data
    return ExactIndex().build(corpus, ids)


@pytest.fixture(scope="module")
def scann(data):
    corpus, _, ids = data
    return ScannIndex(GENEROUS).build(corpus, ids)


def test_generous_setting_reaches_099_recall_at_10(data, exact, scann):
    _, queries, _ = data
    assert scann.num_leaves == round(np.sqrt(N))  # the sqrt(n) default
    assert ann_recall(scann.search(queries, 10)[1], exact.search(queries, 10)[1]) >= 0.99


def test_default_search_parameters_grow_with_k(data, exact):
    corpus, queries, ids = data
    index = ScannIndex(ScannConfig(training_sample_size=4000)).build(corpus, ids)
    (leaves_10, reorder_10), (leaves_500, reorder_500) = index.search_params(10), index.search_params(500)
    assert leaves_500 > leaves_10 and reorder_500 > reorder_10 >= 10
    assert ann_recall(index.search(queries, 100)[1], exact.search(queries, 100)[1]) >= 0.9


def test_scores_are_exact_cosines_after_reordering(data, scann):
    corpus, queries, _ = data
    scores, found = scann.search(queries[:5], 10)
    rows = np.array([[int(i.removeprefix("post")) for i in row] for row in found])
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    q = queries[:5] / np.linalg.norm(queries[:5], axis=1, keepdims=True)
    expected = np.einsum("qd,qkd->qk", q, unit[rows])
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_single_query_equals_its_row_of_a_batch(data, scann):
    _, queries, _ = data
    np.testing.assert_array_equal(scann.search(queries[3:4], 10)[1][0], scann.search(queries, 10)[1][3])


def test_save_then_load_gives_identical_results(data, scann, tmp_path):
    _, queries, _ = data
    scann.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    assert isinstance(loaded, ScannIndex) and loaded.config == scann.config
    a, b = scann.search(queries, 20), loaded.search(queries, 20)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_corrupt_scann_file_is_named(data, scann, tmp_path):
    scann.save(tmp_path)
    (tmp_path / "scann" / "hashed_dataset.npy").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="hashed_dataset.npy: checksum mismatch"):
        load_index(tmp_path)


def test_added_items_are_found_without_a_rebuild_and_survive_save(data, tmp_path):
    corpus, _, ids = data
    index = ScannIndex(GENEROUS).build(corpus, ids)
    fresh = clustered(30, 3)
    fresh_ids = np.array([f"new{i}" for i in range(30)])
    index.add(fresh, fresh_ids)
    assert index.count == N + 30 and not index.needs_retrain()
    _, found = index.search(fresh, 1)
    np.testing.assert_array_equal(found[:, 0], fresh_ids)  # each new item is its own top hit
    index.save(tmp_path)
    np.testing.assert_array_equal(load_index(tmp_path).search(fresh, 1)[1][:, 0], fresh_ids)


def test_adding_past_the_retrain_fraction_retrains_and_keeps_recall(data):
    corpus, queries, ids = data
    index = ScannIndex(ScannConfig(leaves_fraction=0.5, reorder_k=400, retrain_fraction=0.5))
    index.build(corpus[:4800], ids[:4800])
    index.add(corpus[4800:5800], ids[4800:5800])
    assert index.num_leaves == round(np.sqrt(4800))  # +21%: below the threshold, no retrain
    index.add(corpus[5800:], ids[5800:])  # +67%: retrained for the new size
    assert index.num_leaves == round(np.sqrt(N)) and not index.needs_retrain()
    truth = ExactIndex().build(corpus, ids).search(queries, 10)[1]
    assert ann_recall(index.search(queries, 10)[1], truth) >= 0.99


def test_small_corpus_is_scored_exactly(data):
    corpus, queries, ids = data
    small = ScannIndex().build(corpus[:500], ids[:500])
    assert small.num_leaves == 0
    np.testing.assert_array_equal(small.search(queries, 10)[1], ExactIndex().build(corpus[:500], ids[:500]).search(queries, 10)[1])


def test_exclude_drops_seen_items_and_still_returns_k(data, exact, scann):
    _, queries, _ = data
    top = exact.search(queries, 10)[1]
    seen = [row[:5] for row in top]
    _, found = scann.search(queries, 10, exclude=seen)
    assert not any(set(f) & set(s) for f, s in zip(found, seen))
    assert (found != "").all()
    assert ann_recall(found[:, :5], top[:, 5:]) >= 0.99  # the next five exact neighbours move up


def test_bad_inputs(scann):
    with pytest.raises(ValueError, match="queries have dimension 16 but the index holds 32-d"):
        scann.search(np.ones((1, 16)), 5)
    with pytest.raises(ValueError, match=rf"k={N + 1} is larger than the corpus \({N} items\)"):
        scann.search(np.ones((1, D)), N + 1)
    with pytest.raises(ValueError, match="reorder_dtype"):
        ScannConfig(reorder_dtype="int4")
