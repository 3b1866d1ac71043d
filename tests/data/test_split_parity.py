"""temporal_split computes every member at once with array operations; the per-member loop it
replaced is kept here as the reference, and both must give the same examples, field for field,
on random tables (ties in time, repeated engagements, impressions of liked items, idle members)."""

import numpy as np
import pandas as pd
import pytest

from ff_jax.data.splits import TEST, TRAIN, VALIDATION, assign_periods, temporal_split
from ff_jax.data.tables import validate_tables
from ff_jax.data.tables_checks import index_in


def _nearest_negatives(pos_t, neg_t, k, window):
    if k == 0 or len(neg_t) == 0:
        return np.full((len(pos_t), k), -1)
    at = np.searchsorted(neg_t, pos_t)
    cand = at[:, None] + np.arange(-k, k)[None, :]
    valid = (cand >= 0) & (cand < len(neg_t))
    dt = np.abs(neg_t[np.clip(cand, 0, len(neg_t) - 1)] - pos_t[:, None]).astype(float)
    dt[~valid | (dt > window)] = np.inf
    order = np.argsort(dt, axis=1, kind="stable")[:, :k]
    pick = np.take_along_axis(cand, order, 1)
    return np.where(np.isfinite(np.take_along_axis(dt, order, 1)), pick, -1)


def naive_split(tables, test_fraction, validation_fraction, new_quantile, k, window, max_history):
    """One member at a time: the implementation before the array version (its outputs as plain tuples)."""
    inter = tables.interactions
    period, positive = assign_periods(inter, test_fraction, validation_fraction)
    item_ids = inter["item_id"].to_numpy(dtype=object)
    engaged = inter["engaged"].to_numpy(bool)
    times = inter["timestamp"].to_numpy(np.int64)
    user_ids = tables.users["user_id"].tolist()
    codes = index_in(inter["user_id"], tables.users["user_id"])
    pre_test = np.bincount(codes[positive & (period != TEST)], minlength=len(user_ids))
    evaluated = np.bincount(codes[positive & (period == TEST)], minlength=len(user_ids)) > 0
    order = np.flatnonzero(evaluated)
    order = order[np.argsort(pre_test[order], kind="stable")]
    new = set(order[: int(new_quantile * len(order))].tolist()) | set(np.flatnonzero(~evaluated).tolist())
    cohorts = {u: ("new" if i in new else "established") for i, u in enumerate(user_ids)}
    train, validation, test = [], [], []
    for u, uid in enumerate(user_ids):
        rows = np.flatnonzero(codes == u)
        if len(rows) == 0:
            continue
        items, eng, ts, per, pos = item_ids[rows], engaged[rows], times[rows], period[rows], positive[rows]
        train_pos = np.flatnonzero(pos & (per == TRAIN))
        liked = set(items[train_pos].tolist())
        neg = np.flatnonzero(~eng & (per == TRAIN))
        neg = neg[[item not in liked for item in items[neg]]] if len(neg) else neg
        nearest = _nearest_negatives(ts[train_pos], ts[neg], k, window)
        for j, at in enumerate(train_pos.tolist()):
            start = 0 if max_history is None else max(0, at - max_history)
            train.append((uid, items[start:at].tolist(), eng[start:at].tolist(), items[at],
                          list(dict.fromkeys(items[neg[x]] for x in nearest[j] if x >= 0)), int(ts[at]),
                          cohorts[uid], ts[start:at].tolist()))
        for which, out in ((VALIDATION, validation), (TEST, test)):
            targets = np.flatnonzero(pos & (per == which))
            if len(targets):
                first = targets[0]
                out.append((uid, items[:first].tolist(), eng[:first].tolist(), items[targets].tolist(),
                            cohorts[uid], int(ts[first]), ts[:first].tolist()))
    return train, validation, test, cohorts, period


def random_tables(seed: int):
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(5, 40)), int(rng.integers(10, 60))
    n = int(rng.integers(400, 2000))
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)]})
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "text": ["t"] * n_items})
    # Few distinct times: many ties; few items per member: repeats and impressions of liked items.
    inter = pd.DataFrame({"user_id": users["user_id"].to_numpy()[rng.integers(0, n_users - 2, n)],  # 2 idle
                          "item_id": items["item_id"].to_numpy()[rng.integers(0, n_items, n)],
                          "timestamp": rng.integers(0, int(rng.choice([20, 500, 10_000])), n),
                          "engaged": rng.random(n) < rng.uniform(0.2, 0.8)})
    return validate_tables(users, items, inter, name=f"random{seed}")


def as_tuples(splits):
    train = [(e.user_id, list(e.history), list(e.history_engaged), e.positive, e.hard_negatives, e.timestamp,
              e.cohort, list(e.history_timestamps)) for e in splits.train]
    evals = [[(m.user_id, m.history, m.history_engaged, m.targets, m.cohort, m.timestamp, m.history_timestamps)
              for m in members] for members in (splits.validation, splits.test)]
    return train, *evals


@pytest.mark.parametrize("seed", range(12))
def test_array_split_equals_the_per_member_loop(seed):
    rng = np.random.default_rng(1000 + seed)
    tables = random_tables(seed)
    settings = dict(test_fraction=float(rng.choice([0.2, 0.3])), validation_fraction=float(rng.choice([0.0, 0.1, 0.15])),
                    new_quantile=float(rng.choice([0.0, 0.25, 0.5])))
    k, window = int(rng.integers(0, 5)), float(rng.choice([5, 60, 1e9]))
    max_history = None if seed % 3 else int(rng.integers(1, 6))
    splits = temporal_split(tables, max_hard_negatives=k, hard_negative_window_s=window, max_history=max_history,
                            progress=False, **settings)
    train, validation, test, cohorts, period = naive_split(tables, k=k, window=window, max_history=max_history,
                                                           **settings)
    got_train, got_validation, got_test = as_tuples(splits)
    assert len(train) > 20 and (k == 0 or any(t[4] for t in train))  # the inputs exercise what they should
    assert got_train == train
    assert got_validation == validation
    assert got_test == test
    assert splits.cohorts == cohorts
    np.testing.assert_array_equal(splits.period, period)
    assert [splits.count(s) for s in ("train", "validation", "test")] == [len(train), len(validation), len(test)]
    n_new = sum(m[4] == "new" for m in test)
    assert f"{len(train):,} train examples ({sum(not t[4] for t in train):,} without a hard negative)" in str(splits)
    assert f"{len(test):,} test members ({n_new:,} new" in str(splits)
