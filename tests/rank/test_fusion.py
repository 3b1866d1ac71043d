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


def _ndcg10(ranked_row, targets):
    gains = [1.0 / np.log2(r + 2) for r, item in enumerate(ranked_row[:10]) if item in targets]
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(len(targets), 10)))
    return sum(gains) / ideal


def test_ndcg_gain_is_the_mean_per_member_change_with_an_interval_around_it():
    from types import SimpleNamespace

    from ff_jax.rank.evaluate import ndcg_gain

    rng = np.random.default_rng(1)
    members = [SimpleNamespace(targets=[int(t)], cohort="all") for t in rng.integers(0, 20, 200)]
    members.append(SimpleNamespace(targets=[], cohort="all"))  # no target: not evaluated
    data = SimpleNamespace(positions=lambda targets: list(targets))
    before = np.stack([rng.permutation(20) for _ in members])
    after = before.copy()
    for i, m in enumerate(members[:120]):  # move the target to the top for 120 members
        row = list(after[i])
        row.remove(m.targets[0])
        after[i] = [m.targets[0], *row]
    gain = ndcg_gain(before, after, members, data)
    want = np.mean([_ndcg10(a, m.targets) - _ndcg10(b, m.targets)
                    for a, b, m in zip(after, before, members) if m.targets])
    changes = np.array([_ndcg10(a, m.targets) - _ndcg10(b, m.targets)
                        for a, b, m in zip(after, before, members) if m.targets])
    assert gain["members"] == 200
    np.testing.assert_allclose(gain["mean"], want, rtol=1e-12)
    # The bootstrap interval against the normal approximation, mean -/+ 1.96 standard errors,
    # computed here: within a quarter of a standard error (a 90% interval would be 0.3 off).
    error = changes.std(ddof=1) / np.sqrt(len(changes))
    np.testing.assert_allclose(gain["ci95"], [want - 1.96 * error, want + 1.96 * error], atol=0.25 * error)
    assert 0.0 < gain["ci95"][0] < gain["mean"] < gain["ci95"][1]
    # The same seed gives the same interval; another seed resamples differently.
    assert ndcg_gain(before, after, members, data) == gain
    assert ndcg_gain(before, after, members, data, seed=1)["ci95"] != gain["ci95"]
    assert ndcg_gain(before, before, members, data) == {"mean": 0.0, "ci95": [0.0, 0.0], "members": 200}
