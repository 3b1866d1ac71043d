"""Evaluation: top-k with exclusions against a plain sort, metrics on hand-computed cases, history
exclusion modes, Matryoshka prefixes against numpy, ScaNN vs exact, popularity correlation vs scipy."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.evaluate import (ann_report, cutoffs, evaluate_embeddings, evaluate_recommender,
                                       popularity_similarity, rank, top_k)
from ff_jax.retrieval.recommender import EmbeddingRecommender, Recommender, TrainingData
from ff_jax.retrieval.scann_index import ScannConfig


class FixedScores(Recommender):
    """Scores given per user id (a stand-in model whose ranking is known in advance)."""

    name = "fixed"

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def score(self, members):
        return np.array([self.table[m.user_id] for m in members], np.float32)


def corpus_data(n_items: int, users=("u0", "u1")) -> TrainingData:
    ids = [f"i{j}" for j in range(n_items)]
    matrix = sp.csr_matrix((len(users), n_items), dtype=np.float32)
    return TrainingData(ids, pd.DataFrame({"item_id": ids, "text": ids}), list(users), matrix)


def member(user, engaged=(), skipped=(), targets=(), cohort="established"):
    history = list(engaged) + list(skipped)
    return EvalMember(user, history, [True] * len(engaged) + [False] * len(skipped), list(targets), cohort)


def reference_top_k(scores, excluded, k):
    """Plain per-row stable sort: ties to the lower position, excluded rows dropped, -1 padding."""
    out = []
    for row, ex in zip(scores, excluded):
        drop = set(np.asarray(ex).tolist())
        order = [j for j in np.argsort(-row, kind="stable").tolist() if j not in drop][:k]
        out.append(order + [-1] * (min(k, row.size) - len(order)))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 37, 40])
def test_top_k_matches_a_plain_sort_with_ties_and_exclusions(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 6, size=(30, 40)).astype(np.float32)  # many ties
    excluded = [rng.choice(40, size=rng.integers(0, 12), replace=False) for _ in range(30)]
    excluded[0] = np.arange(38)  # only 2 rankable items: the rest of the row is padding
    np.testing.assert_array_equal(top_k(scores, excluded, k), reference_top_k(scores, excluded, k))


def test_top_k_rejects_nan_and_mismatched_exclusions():
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        top_k(np.array([[1.0, 2.0], [np.nan, 0.0]]), [[], []], 1)
    with pytest.raises(ValueError, match="1 exclusion lists for 2 score rows"):
        top_k(np.zeros((2, 3)), [[]], 1)


def test_metrics_on_a_hand_computed_case():
    data = corpus_data(5)
    rec = FixedScores({"u0": [5, 4, 3, 2, 1], "u1": [1, 2, 3, 4, 5]}).fit(data)
    members = [member("u0", engaged=["i0"], targets=["i2", "i4"], cohort="new"),  # ranking: i1 i2 i3 i4
               member("u1", targets=["i3"])]                                      # ranking: i4 i3 i2 i1 i0
    report = evaluate_recommender(rec, members, data, ks=(1, 2, 3), serving_k=None, progress=False)
    u0, u1 = report["metrics"]["new"], report["metrics"]["established"]
    d = 1 / np.log2(np.arange(2, 7))  # discounts of ranks 1..5
    assert u0["recall@1"] == 0 and u0["recall@2"] == 0.5 and u0["recall@3"] == 0.5
    assert u0["ndcg@2"] == pytest.approx(d[1] / (d[0] + d[1]))
    assert u0["mrr"] == pytest.approx(1 / 2)
    assert u1["recall@1"] == 0 and u1["recall@2"] == 1 and u1["hit_rate@2"] == 1
    assert u1["ndcg@2"] == pytest.approx(d[1] / d[0]) and u1["mrr"] == pytest.approx(1 / 2)
    assert report["metrics"]["all"]["recall@2"] == pytest.approx(0.75)
    assert report["metrics"]["all"]["users"] == 2 and report["ks"] == [1, 2, 3]


def test_history_exclusion_modes():
    data = corpus_data(4, users=("u0",))
    rec = FixedScores({"u0": [9, 8, 7, 6]}).fit(data)
    m = [member("u0", engaged=["i0"], skipped=["i1"], targets=["i3"])]
    assert rank(rec, m, data, 4, exclude="engaged", progress=False).tolist() == [[1, 2, 3, -1]]
    assert rank(rec, m, data, 4, exclude="history", progress=False).tolist() == [[2, 3, -1, -1]]
    assert rank(rec, m, data, 4, exclude="none", progress=False).tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="exclude must be one of"):
        rank(rec, m, data, 4, exclude="seen", progress=False)


def test_serving_k_is_capped_at_the_corpus_and_wrong_score_shapes_are_named():
    assert cutoffs((10, 50, 100, 1000), 2000, 120) == [10, 50, 100, 120]

    class Narrow(FixedScores):
        def score(self, members):
            return np.zeros((len(members), 3))

    data = corpus_data(4)
    with pytest.raises(ValueError, match=r"Narrow.score returned shape \(1, 3\); expected \(1, 4\)"):
        evaluate_recommender(Narrow({}).fit(data), [member("u0", targets=["i1"])], data, progress=False)


@pytest.fixture(scope="module")
def clustered():
    """Members near one of 20 cluster centres, items around the same centres; targets = nearby items."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 32))
    item_cluster = rng.integers(0, 20, 6000)
    items = centres[item_cluster] + 0.3 * rng.normal(size=(6000, 32))
    member_cluster = rng.integers(0, 20, 80)
    members_vec = centres[member_cluster] + 0.3 * rng.normal(size=(80, 32))
    data = corpus_data(6000, users=[f"u{i}" for i in range(80)])
    members = []
    for i, c in enumerate(member_cluster):
        pool = np.flatnonzero(item_cluster == c)
        members.append(member(f"u{i}", engaged=[f"i{j}" for j in pool[:5]], targets=[f"i{j}" for j in pool[5:9]]))
    return data, members, members_vec.astype(np.float32), items.astype(np.float32)


def test_matryoshka_prefixes_rank_like_numpy_cosine_on_the_truncated_vectors(clustered):
    data, members, m_vec, i_vec = clustered
    ids = [m.user_id for m in members]
    report = evaluate_embeddings(ids, m_vec, i_vec, members, data, dims=(8, 32), ks=(10,), serving_k=None,
                                 ann=False, progress=False)
    assert set(report["by_dim"]) == {"8", "32"}
    for dim in (8, 32):
        a = m_vec[:, :dim] / np.linalg.norm(m_vec[:, :dim], axis=1, keepdims=True)
        b = i_vec[:, :dim] / np.linalg.norm(i_vec[:, :dim], axis=1, keepdims=True)
        scores = a @ b.T
        ranked = reference_top_k(scores, [data.positions(m.engaged_history) for m in members], 10)
        recall = np.mean([len(set(r) & set(data.positions(m.targets))) / len(m.targets)
                          for r, m in zip(ranked, members)])
        assert report["by_dim"][str(dim)]["metrics"]["all"]["recall@10"] == pytest.approx(recall)
        got = rank(EmbeddingRecommender(ids, m_vec, i_vec, dim=dim).fit(data), members, data, 10, progress=False)
        assert (got == ranked).mean() > 0.99  # float32 vs float64 may swap near-equal neighbours


def test_scann_recall_against_exact_on_clustered_data(clustered):
    data, members, m_vec, i_vec = clustered
    config = ScannConfig(brute_force_below=0, leaves_fraction=0.5)  # a real tree, searched generously
    report = ann_report(m_vec, i_vec, members, data, ks=[10, 100], scann_config=config)
    assert report["scann_leaves"] > 1
    assert report["ann_recall@10"] >= 0.95 and report["ann_recall@100"] >= 0.9
    exact = evaluate_recommender(EmbeddingRecommender([m.user_id for m in members], m_vec, i_vec).fit(data),
                                 members, data, ks=(10, 100), serving_k=None, progress=False)
    served = report["served"]["all"]["recall@100"]
    assert served == pytest.approx(exact["metrics"]["all"]["recall@100"], abs=0.05)


def test_popularity_similarity_matches_scipy():
    rng = np.random.default_rng(1)
    popularity = rng.pareto(1.5, 300)
    members = rng.normal(size=(40, 16)) + 2.0  # members share a common direction (all ones)
    # Items lean towards that direction in proportion to log popularity.
    items = rng.normal(size=(300, 16)) + np.log1p(popularity)[:, None]
    out = popularity_similarity(members, items, popularity, max_members=40, max_items=300)
    m = members / np.linalg.norm(members, axis=1, keepdims=True)
    i = items / np.linalg.norm(items, axis=1, keepdims=True)
    cosine = (m @ i.T).ravel()
    pop = np.tile(popularity, 40)
    assert out["spearman"] == pytest.approx(stats.spearmanr(pop, cosine).statistic, abs=1e-6)
    assert out["pearson_log"] == pytest.approx(stats.pearsonr(np.log1p(pop), cosine).statistic, abs=1e-6)
    assert out["spearman"] > 0.5 and out["pairs"] == 12000


def test_popularity_similarity_names_a_zero_vector_by_its_corpus_row():
    """Only a sample is normalised, but the error must point at the row in the caller's array."""
    rng = np.random.default_rng(2)
    items = rng.normal(size=(300, 8))
    items[250] = 0.0
    with pytest.raises(ValueError, match="item vectors row 250 has zero norm"):
        popularity_similarity(rng.normal(size=(10, 8)), items, np.ones(300), max_items=300)


# ----------------------------------------------------------------------------- the batched path (issue 25)

def naive_report(scores, excluded, targets, cohorts, ks):
    """The old computation, member by member: a stable sort per member, set arithmetic per metric."""
    per_user = []
    for row, ex, tg in zip(scores, excluded, targets):
        drop = set(np.asarray(ex).tolist())
        order = [j for j in np.argsort(-row, kind="stable").tolist() if j not in drop][:max(ks)]
        tg = set(np.asarray(tg).tolist())
        first = next((r for r, j in enumerate(order) if j in tg), None)
        figures = {"mrr": 0.0 if first is None else 1 / (first + 1)}
        for k in ks:
            top = order[:k]
            dcg = sum(1 / np.log2(r + 2) for r, j in enumerate(top) if j in tg)
            ideal = sum(1 / np.log2(r + 2) for r in range(min(len(tg), k)))
            figures[f"recall@{k}"] = len(set(top) & tg) / len(tg)
            figures[f"ndcg@{k}"] = dcg / ideal
            figures[f"hit_rate@{k}"] = float(bool(set(top) & tg))
        per_user.append(figures)
    out = {}
    for name in ["all", *sorted(set(cohorts))]:
        chosen = [f for f, c in zip(per_user, cohorts) if name in ("all", c)]
        out[name] = {"users": float(len(chosen)), **{m: float(np.mean([f[m] for f in chosen])) for m in chosen[0]}}
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batched_top_k_equals_the_old_top_k_and_a_plain_sort(seed):
    from ff_jax.data import ranking_metrics as old

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = rng.integers(-3, 4, size=(25, n)).astype(np.float32)  # ties everywhere, negatives, zeros
    scores[rng.random(scores.shape) < 0.2] *= -1  # -0.0 beside 0.0: they tie (they compare equal)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[:3] = rng.normal(size=(3, n)).astype(np.float32) * 1e-30  # tiny values, both signs
    excluded = [rng.choice(n, size=rng.integers(0, n // 2 + 1), replace=False) for _ in range(25)]
    excluded[4] = np.arange(n)  # nothing rankable: all -1
    for k in (1, 3, n - 1, n, n + 5):
        np.testing.assert_array_equal(top_k(scores, excluded, k), old.top_k(scores, excluded, k))
    # and against the plain sort where no score is -inf (the sort keeps -inf items, top_k pads them)
    finite = np.where(np.isinf(scores), 0.0, scores).astype(np.float32)
    np.testing.assert_array_equal(top_k(finite, excluded, 7), reference_top_k(finite, excluded, 7))


@pytest.mark.parametrize("seed", range(3))
def test_batched_evaluation_equals_the_old_per_member_computation(seed):
    """rank + metrics_of_ranking (batched keys, lookup-table hits) against ranking_metrics (exactly)
    and a naive per-member loop (to rounding), on a random case with ties and empty slots."""
    from ff_jax.data.ranking_metrics import ranking_metrics
    from ff_jax.retrieval.evaluate import metrics_of_ranking

    rng = np.random.default_rng(seed)
    n_items, n_users = 70, 90
    scores = rng.integers(0, 8, size=(n_users, n_items)).astype(np.float32)
    data = corpus_data(n_items, users=[f"u{i}" for i in range(n_users)])
    members = []
    for u in range(n_users):
        picked = rng.choice(n_items, size=rng.integers(1, 60), replace=False)
        cut = rng.integers(0, len(picked))
        members.append(member(f"u{u}", engaged=[f"i{j}" for j in picked[:cut]], targets=[f"i{j}" for j in picked[cut:]],
                              cohort="new" if u % 3 == 0 else "established"))
    members[5].targets.append(members[5].targets[0])  # a repeated target counts once
    rec = FixedScores({f"u{u}": scores[u].tolist() for u in range(n_users)}).fit(data)
    ks = [1, 5, 10, 70]
    ranked = rank(rec, members, data, 70, batch_size=16, progress=False)
    excluded = [data.positions(m.engaged_history) for m in members]
    targets = [data.positions(m.targets) for m in members]
    got = metrics_of_ranking(ranked, members, data, ks)
    assert got == ranking_metrics(ranked, targets, ks, cohorts=[m.cohort for m in members])  # identical floats
    expected = naive_report(scores, excluded, targets, [m.cohort for m in members], ks)
    assert got.keys() == expected.keys()
    for cohort in expected:
        assert got[cohort] == pytest.approx(expected[cohort], rel=1e-12)
    assert (ranked == -1).any()  # members whose history + targets left fewer than 70 items


# ----------------------------------------------------------------------------- fresh targets (issue 27)

def test_fresh_and_seen_targets_by_hand():
    """i3, i4, i5 have no engagement in the training matrix: targets on them are fresh."""
    ids = [f"i{j}" for j in range(6)]
    engaged = np.array([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32)
    data = TrainingData(ids, pd.DataFrame({"item_id": ids, "text": ids}), ["u0", "u1", "u2"], sp.csr_matrix(engaged))
    rec = FixedScores({"u0": [6, 5, 4, 3, 2, 1], "u1": [1, 2, 3, 4, 5, 6], "u2": [0, 0, 9, 0, 0, 0]}).fit(data)
    members = [member("u0", engaged=["i0"], targets=["i3", "i1"]),   # ranking i1 i2 i3 i4 i5
               member("u1", targets=["i4", "i5"], cohort="new"),     # ranking i5 i4 i3 i2 i1 i0
               member("u2", engaged=["i1"], targets=["i2"])]         # ranking i2 i0 i3 i4 i5
    report = evaluate_recommender(rec, members, data, ks=(1, 3), serving_k=None, progress=False)
    fresh, seen = report["freshness"]["fresh"], report["freshness"]["seen"]
    assert (fresh["targets"], fresh["users"], seen["targets"], seen["users"]) == (3, 2, 2, 2)
    assert fresh["recall@1"] == pytest.approx((0 + 1 / 2) / 2) and fresh["recall@3"] == pytest.approx(1.0)
    assert fresh["ndcg@3"] == pytest.approx((1 / np.log2(4) + 1) / 2)
    assert seen["recall@1"] == pytest.approx(1.0)
    # The same by numpy from the ranking: fresh = no engagement in the matrix the recommender saw.
    ranked = rank(rec, members, data, 6, progress=False)
    never = np.flatnonzero(engaged.sum(axis=0) == 0)
    for k in (1, 3):
        for kind, pick in (("fresh", lambda t: np.isin(t, never)), ("seen", lambda t: ~np.isin(t, never))):
            recalls = []
            for row, m in zip(ranked, members):
                t = data.positions(m.targets)[pick(data.positions(m.targets))]
                if t.size:
                    recalls.append(np.isin(row[:k], t).sum() / t.size)
            assert report["freshness"][kind][f"recall@{k}"] == pytest.approx(np.mean(recalls))
    # The printed table: n and R@10 of each kind on the "all" row (no K=10 in a 6-item corpus: "-").
    from ff_jax.retrieval.evaluate import table_rows

    rows = table_rows({"fixed": report})
    assert rows[0][:2] == ["fixed", "all"] and rows[0][-4:] == ["3", "-", "2", "-"]
    assert all(row[-4:] == ["-"] * 4 for row in rows[1:])
    assert len(table_rows({"served": {"metrics": report["metrics"]}})[0]) == 3 + 5  # no freshness, no columns


def test_a_split_without_fresh_targets_reports_none():
    data = corpus_data(4)
    data.engagements = sp.csr_matrix(np.ones((2, 4), np.float32))  # every item engaged
    rec = FixedScores({"u0": [4, 3, 2, 1]}).fit(data)
    report = evaluate_recommender(rec, [member("u0", targets=["i2"])], data, ks=(1,), serving_k=None, progress=False)
    assert report["freshness"]["fresh"]["targets"] == 0 and np.isnan(report["freshness"]["fresh"]["recall@1"])
    assert report["freshness"]["seen"]["recall@1"] == 0.0
