"""Score fusion in reranking (ff_jax.rank.evaluate.Reranking.order) against a loop that sorts each
member's candidates by ranker + weight x cosine by hand."""

import numpy as np

from ff_jax.rank.evaluate import Reranking


def _naive(retrieved, ranker, cosine, weight):
    out = np.full_like(retrieved, -1)
    for i, (r, c) in enumerate(zip(ranker, cosine)):
        fused = [(-(r[j] + weight * c[j]), j) for j in range(len(r))]  # ties keep the retrieved order
        out[i, : len(r)] = [retrieved[i][j] for _, j in sorted(fused)]
    return out


def test_order_sorts_by_ranker_plus_weighted_cosine():
    rng = np.random.default_rng(0)
    retrieved = np.array([[5, 3, 1, -1], [7, 2, 9, 4]])
    cosine = [np.array([0.9, 0.8, 0.7]), np.array([0.6, 0.5, 0.4, 0.3])]  # retrieval's own order
    ranker = [rng.standard_normal(3), rng.standard_normal(4)]
    run = Reranking(members=[None, None], retrieved=retrieved, ranker=ranker, cosine=cosine, seconds=0.0)
    for weight in (0.0, 0.5, 3.0):
        np.testing.assert_array_equal(run.order(weight), _naive(retrieved, ranker, cosine, weight))
    # Weight 0 is the ranker alone; a weight far above the ranker's spread keeps the retriever's order.
    np.testing.assert_array_equal(run.order(0.0)[0, :3], retrieved[0, :3][np.argsort(-ranker[0])])
    np.testing.assert_array_equal(run.order(1e6), retrieved)
