"""Baselines: each against an outside reference (rank-bm25, implicit, dense numpy algebra, the MovieLens
tables) or a planted structure it must find."""

import numpy as np
import pandas as pd
import pytest
import rank_bm25
import scipy.sparse as sp

from ff_jax.data.splits import TEST, TRAIN, EvalMember
from ff_jax.retrieval.baselines import ALS, BM25, BPR, ItemKNN, Popularity, RandomScores, select_on_validation
from ff_jax.retrieval.baselines.bm25 import BM25Index, tokenize
from ff_jax.retrieval.baselines.itemknn import cosine_neighbors
from ff_jax.retrieval.evaluate import evaluate_recommender, rank
from ff_jax.retrieval.recommender import TrainingData, training_data


def data_from(matrix: np.ndarray, texts=None) -> TrainingData:
    n_users, n_items = matrix.shape
    ids = [f"i{j}" for j in range(n_items)]
    items = pd.DataFrame({"item_id": ids, "text": texts or ids})
    return TrainingData(ids, items, [f"u{u}" for u in range(n_users)], sp.csr_matrix(matrix.astype(np.float32)))


def member(user, engaged, targets, cohort="established"):
    return EvalMember(user, list(engaged), [True] * len(engaged), list(targets), cohort)


@pytest.fixture(scope="module")
def planted():
    """6 groups of 40 members; each group engages with (mostly) its own block of 25 items, and items
    differ in overall popularity. Test targets are unseen items of the member's own block."""
    rng = np.random.default_rng(0)
    groups, per_group, block = 6, 40, 25
    n_users, n_items = groups * per_group, groups * block
    group = np.repeat(np.arange(groups), per_group)
    item_group = np.repeat(np.arange(groups), block)
    appeal = rng.uniform(0.2, 0.9, n_items)
    prob = np.where(group[:, None] == item_group[None, :], appeal[None, :], 0.03)
    engaged = rng.random((n_users, n_items)) < prob
    history, members = np.zeros_like(engaged), []
    for u in range(n_users):
        liked = rng.permutation(np.flatnonzero(engaged[u]))
        targets, seen = liked[:3], liked[3:]
        history[u, seen] = True
        members.append(member(f"u{u}", [f"i{j}" for j in seen], [f"i{j}" for j in targets]))
    return data_from(history), members


def recall10(rec, data, members):
    return evaluate_recommender(rec.fit(data), members, data, ks=(10,), serving_k=None,
                                progress=False)["metrics"]["all"]["recall@10"]


def test_popularity_recall_on_a_hand_made_dataset():
    # Item engagement counts: i0: 3, i1: 2, i2: 1, i3: 0.
    data = data_from(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0]]))
    members = [member("u0", ["i0", "i1"], ["i3"]),   # ranking i2 i3      -> target at rank 2
               member("u2", ["i0"], ["i1", "i3"])]   # ranking i1 i2 i3   -> i1 at rank 1
    report = evaluate_recommender(Popularity().fit(data), members, data, ks=(1, 2), serving_k=None, progress=False)
    assert report["metrics"]["all"]["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert report["metrics"]["all"]["recall@2"] == pytest.approx((1 + 0.5) / 2)
    np.testing.assert_array_equal(data.popularity(), [3, 2, 1, 0])


def test_random_recall_is_k_over_the_corpus():
    data = data_from(np.zeros((1, 200)))
    rng = np.random.default_rng(3)
    members = [member("u0", [], [f"i{j}" for j in rng.choice(200, 5, replace=False)]) for _ in range(3000)]
    assert recall10(RandomScores(seed=1), data, members) == pytest.approx(10 / 200, abs=0.005)


def test_training_data_keeps_only_engagements_before_the_evaluated_period():
    from ff_jax.data import load_movielens_100k, temporal_split

    tables = load_movielens_100k()
    splits = temporal_split(tables, progress=False)
    inter = tables.interactions
    for split, allowed in (("test", splits.period != TEST), ("validation", splits.period == TRAIN)):
        data = training_data(tables, splits, split)
        rows = inter[allowed & inter["engaged"].to_numpy()]
        expected = set(zip(rows["user_id"], rows["item_id"]))
        coo = data.engagements.tocoo()
        got = {(data.user_ids[u], data.corpus_ids[i]) for u, i in zip(coo.row, coo.col)}
        assert got == expected
    # The test members' engaged history is exactly their row of the test-split training data.
    data = training_data(tables, splits, "test")
    for m in splits.test[:50]:
        row = data.engagements[data.user_row(m.user_id)].indices
        assert set(row.tolist()) == set(data.positions(m.engaged_history).tolist())


def test_item_knn_similarities_equal_dense_cosine_and_keep_the_top_neighbours():
    rng = np.random.default_rng(0)
    x = (rng.random((50, 30)) < 0.2).astype(np.float32)
    x[:, 7] = 0  # an item nobody engaged with
    norms = np.linalg.norm(x, axis=0)
    dense = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(dense, 0)
    full = cosine_neighbors(sp.csr_matrix(x), None, chunk=7).toarray()
    np.testing.assert_allclose(full, dense, atol=1e-6)
    pruned = cosine_neighbors(sp.csr_matrix(x), 5, chunk=7).toarray()
    for j in range(30):
        kept = np.flatnonzero(pruned[j])
        assert len(kept) <= 5
        if len(kept):  # whatever is kept is among the row's largest similarities
            assert pruned[j, kept].min() >= np.sort(dense[j])[-5] - 1e-6
            # ties at the last kept value go to the lower items
            last = pruned[j, kept].min()
            tied = np.flatnonzero(np.isclose(dense[j], last, atol=1e-6))
            assert set(kept[np.isclose(pruned[j, kept], last, atol=1e-6)]) == set(tied[: len(kept) - (pruned[j, kept] > last + 1e-6).sum()])


def test_als_fold_in_solves_the_documented_weighted_normal_equations():
    """implicit's confidence convention, as als.py documents it: c = alpha on engagements, 1 elsewhere."""
    rng = np.random.default_rng(1)
    x = (rng.random((30, 20)) < 0.25).astype(np.float32)
    data = data_from(x)
    alpha, reg = 5.0, 0.5
    rec = ALS(factors=4, reg=reg, alpha=alpha, iterations=3).fit(data)
    items = rec.item_factors.astype(np.float64)
    members = [member(f"u{u}", [f"i{j}" for j in np.flatnonzero(x[u])], []) for u in range(6)]
    folded = rec.member_factors(members)
    # Outside reference: each member's weighted ridge regression solved by numpy least squares.
    for u in range(6):
        p = x[u].astype(np.float64)
        w = np.sqrt(np.where(p > 0, alpha, 1.0))
        a = np.vstack([w[:, None] * items, np.sqrt(reg) * np.eye(4)])
        b = np.concatenate([w * p, np.zeros(4)])
        np.testing.assert_allclose(folded[u], np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(rec.score(members), folded @ rec.item_factors.T, rtol=1e-5, atol=1e-6)


def test_collaborative_filtering_finds_the_planted_groups_and_beats_popularity(planted):
    data, members = planted
    popularity = recall10(Popularity(), data, members)
    als = recall10(ALS(factors=8, reg=1.0, alpha=5.0, iterations=8), data, members)
    knn = recall10(ItemKNN(neighbors=20), data, members)
    bpr = recall10(BPR(factors=8, reg=1e-3, learning_rate=0.05, iterations=50), data, members)
    assert als > 1.8 * popularity and als > 0.5
    assert knn > 1.8 * popularity and bpr > 1.5 * popularity


@pytest.mark.parametrize("make", [lambda: ALS(factors=8, iterations=5), lambda: BPR(factors=8, iterations=20)],
                         ids=["ALS", "BPR"])
def test_cf_baselines_are_seeded_and_never_recommend_the_engaged_history(planted, make):
    data, members = planted
    first, second = make().fit(data), make().fit(data)
    np.testing.assert_array_equal(first.score(members[:20]), second.score(members[:20]))
    ranked = rank(first, members, data, k=60, progress=False)
    for m, row in zip(members, ranked):
        history = set(data.positions(m.engaged_history).tolist())
        assert history and not history & set(row.tolist())
    # Without the exclusion, history items would take top-60 slots: the filter is doing work.
    top = np.argsort(-first.score(members[:20]), axis=1)[:, :60]
    assert np.mean([len(set(t) & set(data.positions(m.engaged_history))) for t, m in zip(top, members)]) > 2


def test_bpr_ranks_an_unseen_member_by_item_bias(planted):
    data, members = planted
    rec = BPR(factors=8, iterations=20).fit(data)
    stranger = EvalMember("nobody", [], [], ["i0"], "new")
    np.testing.assert_allclose(rec.score([stranger])[0], rec.item_factors[:, -1], rtol=1e-6)


class _Leaky(RandomScores):
    """Random scores plus `signal` on each member's targets: higher signal, higher recall."""

    def __init__(self, signal: float, members):
        super().__init__(seed=0)
        self.signal, self.targets = signal, {m.user_id: m.targets for m in members}

    def score(self, members):
        scores = super().score(members)
        for row, m in enumerate(members):
            scores[row, self.data.positions(self.targets[m.user_id])] += self.signal
        return scores


def test_select_on_validation_picks_the_best_grid_point_and_reports_every_one(planted):
    data, members = planted
    grid = {"signal": (0.0, 0.2, 5.0, 0.5), "seed": (0, 1)}
    best, table = select_on_validation(lambda signal, seed: _Leaky(signal, members), grid, data, members)
    assert [(row["signal"], row["seed"]) for row in table] == [(s, d) for s in grid["signal"] for d in grid["seed"]]
    assert best == {"signal": 5.0, "seed": 0}  # perfect recall; ties go to the earlier point
    assert table[4]["recall@10"] == table[5]["recall@10"] == 1.0
    assert table[0]["recall@10"] < table[2]["recall@10"] < table[6]["recall@10"] < 1.0
    with pytest.raises(ValueError, match="at least one value"):
        select_on_validation(lambda signal: _Leaky(signal, members), {"signal": ()}, data, members)


def test_bm25_scores_equal_rank_bm25():
    documents = ["the quick brown fox", "a lazy dog sleeps", "the dog and the fox", "quick quick dog",
                 "brown bears eat fish", "the the the"]
    tokens = [tokenize(d) for d in documents]
    ours = BM25Index(tokens)
    reference = rank_bm25.BM25Okapi(tokens)
    for query in ["quick fox", "the dog dog", "fish unknownword", "the"]:
        np.testing.assert_allclose(ours.scores([tokenize(query)])[0], reference.get_scores(tokenize(query)),
                                   rtol=1e-5, atol=1e-6)


def test_bm25_ranks_an_exact_text_match_first():
    texts = ["Heat (1995). Genres: Action, Crime", "Toy Story (1995). Genres: Animation, Comedy",
             "Casino (1995). Genres: Crime, Drama", "Babe (1995). Genres: Children, Comedy",
             "Toy Soldiers (1991). Genres: Action"]
    data = data_from(np.zeros((1, 5)), texts=texts)
    history_owner = EvalMember("u0", ["i1"], [True], ["i3"], "new")
    rec = BM25(query_columns=["text"]).fit(data)
    scores = rec.score([history_owner])[0]
    assert int(np.argmax(scores)) == 1  # the history item's own text matches itself best
    assert scores[4] > scores[2]  # "Toy" shared beats nothing shared but the year


def test_minilm_embeds_in_input_order_with_padding_ignored_and_ranks_by_meaning():
    from ff_jax.retrieval.baselines.minilm import MiniLM, MiniLMEncoder, member_text

    encoder = MiniLMEncoder(batch_size=4)
    texts = ["A kitten sleeps on the sofa.", "Stock markets fell sharply today.",
             "Toy Story (1995). Genres: Animation, Children's, Comedy", "A cat naps on the couch in the sun."]
    together = encoder.encode(texts)  # one padded batch, internally sorted by length
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert together.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)
    similarity = together @ together.T
    assert similarity[0, 3] > similarity[0, 1] + 0.3
    assert member_text(["old", "new"]) == "new; old"
    data = data_from(np.zeros((1, 4)), texts=texts)
    rec = MiniLM(encoder, progress=False).fit(data)
    scores = rec.score([EvalMember("u0", ["i0"], [True], ["i3"], "new")])[0]
    assert int(np.argmax(np.delete(scores, 0))) == 2  # i3 (index 2 once i0 is removed) is the cat


@pytest.mark.parametrize("make", [Popularity, lambda: ItemKNN(neighbors=20), lambda: ALS(factors=8, iterations=8),
                                  lambda: BPR(factors=8, reg=1e-3, learning_rate=0.05, iterations=50)],
                         ids=["popularity", "item-kNN", "ALS", "BPR"])
def test_id_baselines_cannot_tell_never_engaged_items_apart(planted, make):
    """A fresh item (no engagement in the training matrix) gets, for every member, the very score
    every other never-engaged item gets: the model knows nothing of it, so where a fresh target
    lands among the fresh items is the corpus order's doing (chance), not the model's."""
    data, members = planted
    matrix = data.engagements.toarray()
    never = np.arange(3, data.num_items, 12)  # 13 items, 2 or 3 in each group's block
    matrix[:, never] = 0
    fresh_data = TrainingData(data.corpus_ids, data.items, data.user_ids, sp.csr_matrix(matrix))
    scores = make().fit(fresh_data).score(members)
    assert np.ptp(scores[:, never], axis=1).max() == 0.0  # equal within each member, exactly
    assert np.ptp(scores, axis=1).min() > 0  # while the engaged items' scores differ
    # Each member gets one fresh target more; the report counts the fresh ones apart.
    never_ids = {f"i{j}" for j in never}
    with_fresh = [member(m.user_id, [h for h in m.engaged_history if h not in never_ids],
                         list(dict.fromkeys(m.targets + [f"i{never[u % len(never)]}"]))) for u, m in enumerate(members)]
    report = evaluate_recommender(make().fit(fresh_data), with_fresh, fresh_data, ks=(10,), serving_k=None,
                                  progress=False)
    fresh = report["freshness"]["fresh"]
    assert fresh["users"] == len(members)
    assert fresh["targets"] == sum(len(set(m.targets) & never_ids) for m in with_fresh)
