"""`ff-jax eval` reports any registered index kind: a brute-force index defined here gets its row,
with recall 1 against exact search and the served metrics of numpy cosine ranking; an index that
serves the worst items gets recall 0; the default keeps ScaNN against exact as before."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.evaluate import INDEXES, evaluate_embeddings, index_reports, print_index_reports
from ff_jax.retrieval.exact import ExactIndex
from ff_jax.retrieval.index import INDEX_KINDS, Index, register_index
from ff_jax.retrieval.recommender import TrainingData
from ff_jax.retrieval.scann_index import ScannIndex


class BruteIndex(Index):
    """Cosine kNN by a full numpy sort: the simplest index there is."""

    kind = "brute"

    def _build(self, vectors):
        self.vectors = vectors

    def _add(self, vectors):
        self.vectors = np.concatenate([self.vectors, vectors])

    def _order(self, scores):
        return np.argsort(-scores, axis=1, kind="stable")

    def _search_positions(self, queries, k):
        scores = queries @ self.vectors.T
        top = self._order(scores)[:, :k]
        return np.take_along_axis(scores, top, 1), top

    def _save(self, path):
        np.save(path / "vectors.npy", self.vectors)
        return {}

    @classmethod
    def _load(cls, path, manifest):
        index = cls()
        index.vectors = np.load(path / "vectors.npy")
        return index


class WorstIndex(BruteIndex):
    """Serves the least similar items first: a kind whose row must differ from the reference's."""

    kind = "worst"

    def _order(self, scores):
        return np.argsort(scores, axis=1, kind="stable")


@pytest.fixture
def registered():
    """BruteIndex and WorstIndex registered for one test; INDEX_KINDS as it was afterwards."""
    before = dict(INDEX_KINDS)
    register_index(BruteIndex)
    register_index(WorstIndex)
    yield
    INDEX_KINDS.clear()
    INDEX_KINDS.update(before)


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(3)
    n_items, n_members = 600, 40
    ids = [f"i{j}" for j in range(n_items)]
    users = [f"u{i}" for i in range(n_members)]
    data = TrainingData(ids, pd.DataFrame({"item_id": ids, "text": ids}), users,
                        sp.csr_matrix((n_members, n_items), dtype=np.float32))
    members = [EvalMember(u, [f"i{j}" for j in rng.choice(n_items, 5, replace=False)], [True] * 5,
                          [f"i{j}" for j in rng.choice(n_items, 4, replace=False)], "established") for u in users]
    return data, members, rng.normal(size=(n_members, 16)).astype(np.float32), rng.normal(
        size=(n_items, 16)).astype(np.float32)


def test_the_built_in_kinds_register_themselves():
    assert INDEX_KINDS["exact"] is ExactIndex and INDEX_KINDS["scann"] is ScannIndex
    assert INDEXES == ("exact", "scann")


def test_a_registered_kind_gets_its_row(world, registered, capsys):
    data, members, member_vectors, item_vectors = world
    users = [m.user_id for m in members]
    report = evaluate_embeddings(users, member_vectors, item_vectors, members, data, ks=(10, 50), serving_k=None,
                                 progress=False, indexes=("exact", "scann", "brute", "worst"))
    assert list(report["indexes"]) == ["scann", "brute", "worst"] and report["index_reference"] == "exact"
    brute, worst = report["indexes"]["brute"], report["indexes"]["worst"]
    assert brute["ann_recall@10"] == pytest.approx(1.0) and brute["ann_recall@50"] == pytest.approx(1.0)
    assert worst["ann_recall@10"] == 0.0  # the 10 least similar of 600 items are none of the 10 most
    # Brute force serves what evaluate_recommender ranks with numpy cosine at full width.
    full = report["by_dim"]["16"]["metrics"]["all"]
    for metric in ("recall@10", "recall@50", "ndcg@10"):
        assert brute["served"]["all"][metric] == pytest.approx(full[metric])
    assert worst["served"]["all"]["recall@50"] < full["recall@50"] or full["recall@50"] == 0
    assert "brute_leaves" not in brute and "scann_leaves" in report["indexes"]["scann"]
    assert report["ann"] is report["indexes"]["scann"]  # the first index measured, for the sweep summaries

    print_index_reports(report["indexes"], report["index_reference"])
    out = capsys.readouterr().out
    assert "brute-served" in out and "worst-served" in out and "scann-served" in out
    assert "brute recall against exact search: @10 1.0000, @50 1.0000" in out


def test_brute_force_can_be_the_reference(world, registered):
    data, members, member_vectors, item_vectors = world
    reports = index_reports(member_vectors, item_vectors, members, data, ks=(10,), indexes=("brute", "exact"))
    assert list(reports) == ["exact"] and reports["exact"]["ann_recall@10"] == pytest.approx(1.0)


def test_the_default_keeps_scann_against_exact(world):
    data, members, member_vectors, item_vectors = world
    report = evaluate_embeddings([m.user_id for m in members], member_vectors, item_vectors, members, data,
                                 ks=(10,), serving_k=None, progress=False)
    assert list(report["indexes"]) == ["scann"] and report["index_reference"] == "exact"
    assert set(report["ann"]) == {"ann_recall@10", "scann_leaves", "served"}


@pytest.mark.parametrize("indexes, match", [
    (("exact", "faiss"), r"unknown index kind\(s\) \['faiss'\]; registered: \['exact', 'scann'\]"),
    (("exact",), "name the reference, then each index"),
    (("exact", "scann", "scann"), "once each"),
])
def test_bad_index_lists_are_refused_before_any_ranking(world, indexes, match):
    data, members, member_vectors, item_vectors = world

    class Untouchable(list):
        def __getitem__(self, i):
            raise AssertionError("ranked before the index list was checked")

        def __iter__(self):
            raise AssertionError("ranked before the index list was checked")

    with pytest.raises(ValueError, match=match):
        evaluate_embeddings([m.user_id for m in members], member_vectors, item_vectors, Untouchable(members),
                            data, ks=(10,), progress=False, indexes=indexes)


def test_a_kind_names_one_class(registered):
    class Impostor(BruteIndex):
        pass

    with pytest.raises(ValueError, match="index kind 'brute' is already .*BruteIndex"):
        register_index(Impostor)
    assert register_index(BruteIndex) is BruteIndex  # registering the same class again is harmless
