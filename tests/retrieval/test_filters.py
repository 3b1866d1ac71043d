"""Post-retrieval filters against a brute-force numpy reference (mask, then top-k)."""

import numpy as np
import pytest

from ff_jax.retrieval import ExactIndex, filtered_search
from ff_jax.retrieval.filters import compact, row_membership

N, D = 400, 16


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((N, D)).astype(np.float32)
    queries = rng.standard_normal((6, D)).astype(np.float32)
    ids = np.array([f"p{i}" for i in range(N)])
    authors = {f"p{i}": f"a{i % 7}" for i in range(N)}
    return corpus, queries, ids, authors, ExactIndex().build(corpus, ids)


def reference(corpus, queries, ids, k, drop):
    """Top-k of cosine after setting dropped (query, item) pairs to -inf."""
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.where(drop, -np.inf, q @ c.T)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[top]


def test_row_membership_matches_python_sets():
    values = np.array([["a", "b", "c"], ["a", "b", "c"], ["x", "y", "z"]])
    sets = [{"b", "zz"}, set(), {"z", "x"}]
    expected = np.array([[v in s for v in row] for row, s in zip(values, sets)])
    np.testing.assert_array_equal(row_membership(values, sets), expected)
    ints = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(row_membership(ints, np.array([[2, 9], [9, 9]])), [[False, True], [False, False]])


def test_row_membership_rejects_mixed_id_types():
    with pytest.raises(ValueError, match="cannot compare"):
        row_membership(np.array([[1, 2]]), [["a"]])


def test_compact_keeps_order_and_pads():
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    ids = np.array([["a", "b", "c", "d"]])
    s, i, kept = compact(scores, ids, np.array([[False, True, True, True]]), 2, "")
    np.testing.assert_array_equal(i, [["a", ""]])
    np.testing.assert_array_equal(s, [[np.float32(0.9), -np.inf]])
    assert kept.tolist() == [1]


def test_seen_items_never_come_back_and_k_remain(setup):
    corpus, queries, ids, _, index = setup
    seen = [list(ids[np.random.default_rng(q).choice(N, 50, replace=False)]) for q in range(len(queries))]
    seen[0] = list(index.search(queries[:1], 30)[1][0])  # the whole natural top-30 was seen
    _, found = index.search(queries, 20, exclude=seen)
    drop = np.array([[i in set(s) for i in ids] for s in seen])
    np.testing.assert_array_equal(found, reference(corpus, queries, ids, 20, drop))


def test_blocked_authors_are_filtered_with_a_second_fetch(setup):
    corpus, queries, ids, authors, index = setup
    top_authors = {authors[i] for i in index.search(queries[:1], 60)[1][0][:40]}
    blocked = [sorted(top_authors)[:6], [], ["a3"], None, ["a1", "a2"], ["nobody"]]
    # Query 0 blocks 6 of 7 authors: 2k candidates hold too few survivors, so it must refetch.
    _, found = filtered_search(index, queries, 10, blocked_authors=blocked, item_authors=authors)
    drop = np.array([[authors[i] in set(b or []) for i in ids] for b in blocked])
    np.testing.assert_array_equal(found, reference(corpus, queries, ids, 10, drop))


def test_seen_and_blocked_combine(setup):
    corpus, queries, ids, authors, index = setup
    seen = [ids[:100]] * len(queries)
    blocked = [["a0"]] * len(queries)
    _, found = filtered_search(index, queries, 15, seen=seen, blocked_authors=blocked, item_authors=authors)
    drop = np.array([[(n < 100) or authors[i] == "a0" for n, i in enumerate(ids)]] * len(queries))
    np.testing.assert_array_equal(found, reference(corpus, queries, ids, 15, drop))


def test_slots_stay_empty_when_the_corpus_runs_out(setup):
    _, queries, ids, _, index = setup
    scores, found = index.search(queries[:2], 5, exclude=[ids[: N - 3], []])
    assert sorted(found[0][:3]) == sorted(ids[N - 3 :]) and list(found[0][3:]) == ["", ""]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[1]).all()


def test_integer_ids_pad_with_minus_one(setup):
    corpus, queries, _, _, _ = setup
    index = ExactIndex().build(corpus[:4], np.arange(4))
    _, found = index.search(queries[:1], 3, exclude=[[0, 1, 2]])
    assert found.tolist() == [[3, -1, -1]]


def test_bad_filter_inputs(setup):
    _, queries, _, _, index = setup
    with pytest.raises(ValueError, match="exclude has 1 entries for 6 queries"):
        index.search(queries, 5, exclude=[["p1"]])
    with pytest.raises(ValueError, match="blocked_authors needs item_authors"):
        filtered_search(index, queries, 5, blocked_authors=[["a1"]] * 6)
    with pytest.raises(ValueError, match=r"k=401 is larger than the corpus \(400 items\)"):
        filtered_search(index, queries, N + 1, seen=[[]] * 6)
