"""Ranking metrics (shared by training's validation and ff_jax.retrieval) against cases worked out by hand."""

import numpy as np
import pytest

from ff_jax.data.ranking_metrics import hit_matrix, ndcg_at_k, ranking_metrics, recall_at_k, reciprocal_rank

# User 0: targets {b, d, z}; ranked a b c d -> hits at positions 1 and 3 (0-based).
# User 1: targets {w};       ranked w x y v -> hit at position 0.
# User 2: targets {q, r};    ranked a b c d -> no hit.
RANKED = np.array([list("abcd"), list("wxyv"), list("abcd")])
TARGETS = [{"b", "d", "z"}, ["w", "w"], {"q", "r"}]
L2, L3, L4 = np.log2(2), np.log2(3), np.log2(4)
L5 = np.log2(5)


def test_hit_matrix_and_distinct_target_counts():
    hits, sizes = hit_matrix(RANKED, TARGETS)
    np.testing.assert_array_equal(hits, [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert sizes.tolist() == [3, 1, 2]  # duplicate targets count once


def test_recall_ndcg_mrr_by_hand():
    hits, sizes = hit_matrix(RANKED, TARGETS)
    np.testing.assert_allclose(recall_at_k(hits, sizes, 2), [1 / 3, 1, 0])
    np.testing.assert_allclose(recall_at_k(hits, sizes, 4), [2 / 3, 1, 0])
    # User 0 at K=4: DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3) + 1/log2(4).
    expected_u0 = (1 / L3 + 1 / L5) / (1 / L2 + 1 / L3 + 1 / L4)
    np.testing.assert_allclose(ndcg_at_k(hits, sizes, 4), [expected_u0, 1.0, 0.0])
    # At K=1 user 0's ideal list has one slot: IDCG = 1, DCG = 0.
    np.testing.assert_allclose(ndcg_at_k(hits, sizes, 1), [0.0, 1.0, 0.0])
    np.testing.assert_allclose(reciprocal_rank(hits), [1 / 2, 1.0, 0.0])


def test_ranking_metrics_averages_users_and_splits_cohorts():
    out = ranking_metrics(RANKED, TARGETS, ks=(2, 4), cohorts=["new", "est", "new"])
    assert out["all"]["users"] == 3 and out["new"]["users"] == 2 and out["est"]["users"] == 1
    np.testing.assert_allclose(out["all"]["recall@4"], (2 / 3 + 1 + 0) / 3)
    np.testing.assert_allclose(out["new"]["recall@4"], (2 / 3 + 0) / 2)
    np.testing.assert_allclose(out["est"]["mrr"], 1.0)
    np.testing.assert_allclose(out["all"]["hit_rate@2"], 2 / 3)
    np.testing.assert_allclose(out["new"]["mrr"], 0.25)


def test_integer_ids_work_the_same():
    ranked = np.array([[5, 7, 9], [1, 2, 3]])
    out = ranking_metrics(ranked, [{9}, {2, 4}], ks=(3,))
    np.testing.assert_allclose(out["all"]["recall@3"], (1 + 0.5) / 2)
    np.testing.assert_allclose(out["all"]["mrr"], (1 / 3 + 1 / 2) / 2)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"targets\[1\] is empty"):
        ranking_metrics(RANKED[:2], [{"a"}, set()])
    with pytest.raises(ValueError, match="K=10 is outside the ranked lists' length 1..4"):
        ranking_metrics(RANKED, TARGETS, ks=(10,))
    with pytest.raises(ValueError, match="targets has 2 entries for 3 ranked lists"):
        ranking_metrics(RANKED, TARGETS[:2])
    with pytest.raises(ValueError, match="cohorts has shape"):
        ranking_metrics(RANKED, TARGETS, ks=(2,), cohorts=["a"])
