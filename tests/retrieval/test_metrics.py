"""ANN recall and the popularity-similarity correlation against cases worked out by hand (the
ranking metrics: tests/data/test_ranking_metrics.py)."""

import numpy as np
import pytest

from ff_jax.retrieval.metrics import ann_recall, average_ranks, correlation


def test_ann_recall_by_hand():
    approx = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    exact = np.array([[4, 3, 9, 1], [5, 6, 7, 8]])
    assert ann_recall(approx, exact) == pytest.approx((3 / 4 + 1) / 2)


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([10, 20, 10, 30, 20, 20])), [1.5, 4, 1.5, 6, 4, 4])


def test_spearman_and_pearson_by_hand():
    popularity = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    similarity = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    # Ranks 1..5 vs 1,3,2,5,4: d^2 sum = 0+1+1+1+1 = 4, rho = 1 - 6*4/(5*24) = 0.8.
    assert correlation(popularity, similarity) == pytest.approx(0.8)
    assert correlation(popularity, similarity, "pearson") == pytest.approx(np.corrcoef(popularity, similarity)[0, 1])
    assert correlation(popularity, -2 * popularity + 1, "pearson") == pytest.approx(-1.0)
    # With ties Spearman is Pearson of average ranks: x ranks 1.5,1.5,3 vs y 1,2,3.
    assert correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert np.isnan(correlation([1, 1, 1], [1, 2, 3]))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="must both be"):
        ann_recall(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="method must be"):
        correlation([1, 2], [2, 1], "kendall")
