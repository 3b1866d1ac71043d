"""Temporal splits: the MovieLens protocol of docs/reference.md, no leakage, hard negatives, cohorts."""

import numpy as np
import pandas as pd
import pytest

from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.splits import TEST, TRAIN, VALIDATION, temporal_split
from ff_jax.data.tables import validate_tables


@pytest.fixture(scope="module")
def movielens():
    return load_movielens_100k()


@pytest.fixture(scope="module")
def splits(movielens):
    return temporal_split(movielens, progress=False)


def _popularity_recall(splits, ks=(10, 50, 100)):
    """Popularity baseline: count engagements in the test members' histories, rank unseen items."""
    index = {item: k for k, item in enumerate(splits.corpus_ids)}
    counts = np.zeros(len(index))
    for m in splits.test:
        np.add.at(counts, [index[i] for i in m.engaged_history], 1)
    recalls = []
    for m in splits.test:
        scores = counts.copy()
        scores[[index[i] for i in m.engaged_history]] = -np.inf
        top = np.argsort(-scores, kind="stable")[: max(ks)]
        targets = {index[i] for i in m.targets}
        recalls.append([len(targets & set(top[:k].tolist())) / len(targets) for k in ks])
    return np.mean(recalls, axis=0)


def test_reproduces_the_reference_movielens_protocol(splits):
    # docs/reference.md: 938 users evaluated, popularity R@10 .068, R@50 .234, R@100 .358.
    assert len(splits.test) == 938
    r10, r50, r100 = _popularity_recall(splits)
    assert abs(r10 - 0.068) < 0.005
    assert abs(r50 - 0.234) < 0.01
    assert abs(r100 - 0.358) < 0.01


def test_test_targets_are_the_last_fifth_of_each_members_positives(movielens, splits):
    # Independent pandas formulation of the protocol.
    pos = movielens.interactions[movielens.interactions.engaged]
    expected = {}
    for user, group in pos.groupby("user_id", sort=False):
        n_test = int(np.floor(0.2 * len(group) + 1e-9))
        if n_test:
            expected[user] = group["item_id"].tolist()[-n_test:]
    assert {m.user_id: m.targets for m in splits.test} == expected


def test_no_temporal_leakage(movielens, splits):
    first_test = {m.user_id: m.timestamp for m in splits.test}
    first_val = {m.user_id: m.timestamp for m in splits.validation}
    for m in splits.test + splits.validation:
        assert max(m.history_timestamps) <= m.timestamp
        assert not set(m.targets) & set(m.engaged_history)
    for ex in splits.train:
        limit = min(first_test.get(ex.user_id, np.inf), first_val.get(ex.user_id, np.inf))
        assert ex.timestamp <= limit
        assert all(t <= ex.timestamp for t in ex.history_timestamps)
        assert len(ex.history) == len(ex.history_engaged) == len(ex.history_timestamps)
    # Rows are ordered train < validation < test within each member.
    period = pd.Series(splits.period, index=movielens.interactions.index)
    assert period.groupby(movielens.interactions.user_id).apply(lambda p: p.is_monotonic_increasing).all()
    assert set(np.unique(splits.period)) == {TRAIN, VALIDATION, TEST}


def test_hard_negatives_are_impressed_not_engaged_training_items(movielens, splits):
    inter = movielens.interactions.assign(period=splits.period)
    negatives = set(map(tuple, inter[~inter.engaged & (inter.period == TRAIN)][["user_id", "item_id"]].values))
    liked = set(map(tuple, inter[inter.engaged & (inter.period == TRAIN)][["user_id", "item_id"]].values))
    with_neg = [ex for ex in splits.train if ex.hard_negatives]
    assert len(with_neg) > 0.9 * len(splits.train)
    for ex in with_neg:
        for item in ex.hard_negatives:
            assert (ex.user_id, item) in negatives and (ex.user_id, item) not in liked


def test_cohorts_split_evaluated_members_by_positives(splits):
    n_pos = {m.user_id: len(m.engaged_history) for m in splits.test}
    new = [n_pos[m.user_id] for m in splits.test if m.cohort == "new"]
    old = [n_pos[m.user_id] for m in splits.test if m.cohort == "established"]
    assert len(new) == int(0.25 * 938)
    assert max(new) <= min(old)


def _tiny(rows):
    users = pd.DataFrame({"user_id": ["a", "b", "idle"]})
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(12)], "text": [f"item {k}" for k in range(12)]})
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "engaged"])
    return validate_tables(users, items, inter, name="tiny")


def test_repeat_engagements_and_nearest_hard_negatives():
    rows = [("a", f"i{k}", 100 * k, True) for k in range(10)]
    rows += [("a", "i0", 950, True),            # a repeat: history, never a target
             ("a", "i10", 390, False), ("a", "i11", 120, False), ("a", "i1", 105, False),  # i1 liked
             ("b", "i3", 50, True)]
    split = temporal_split(_tiny(rows), test_fraction=0.2, validation_fraction=0.1, max_hard_negatives=1,
                           hard_negative_window_s=60, progress=False)
    test = {m.user_id: m for m in split.test}
    assert list(test) == ["a"] and test["a"].targets == ["i8", "i9"]
    assert [m.targets for m in split.validation] == [["i7"]]
    by_pos = {ex.positive: ex for ex in split.train if ex.user_id == "a"}
    assert by_pos["i1"].hard_negatives == ["i11"]       # 20 s away; i1's own impression is excluded
    assert by_pos["i4"].hard_negatives == ["i10"]       # 10 s away
    assert by_pos["i6"].hard_negatives == []            # nothing within 60 s
    assert split.cohorts["idle"] == "new" and "idle" not in {ex.user_id for ex in split.train}


def test_max_history_keeps_the_newest_items():
    rows = [("a", f"i{k}", 100 * k, True) for k in range(10)]
    split = temporal_split(_tiny(rows), max_history=3, progress=False)
    ex = next(e for e in split.train if e.positive == "i6")
    assert list(ex.history) == ["i3", "i4", "i5"] and ex.history[-1] == "i5"
