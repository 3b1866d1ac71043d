"""Temporal splits: train on each member's past, evaluate on their later engagements.

Protocol: docs/reference.md, "Evaluation protocol" (the one its MovieLens baselines use). Per
member, the positives (first engagement with an item) are ordered by time (ties keep input order);
the last floor(test_fraction·n) are test targets, the floor(validation_fraction·n) before
them validation targets, the rest training positives. A member's interactions are split
at the same points, so every row falls in one period: train < validation < test.

- TrainExample: one per training positive; history = the member's interactions before it;
  hard negatives = the member's impressed-but-not-engaged training-period items nearest in
  time (never an item the member engaged with in the training period).
- EvalMember (validation / test): history = every interaction before the first target;
  rank all items not in `engaged_history`; targets = the held-out positives.
- Cohorts: "new" = the `new_quantile` share of evaluated members with the fewest positives
  before their test targets (ties: input order of the users table); members with no test
  target have fewer than 1/test_fraction positives and count as "new" too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ff_jax.data.tables import FeedTables, NotEnoughData
from ff_jax.data.tables_checks import factorize, index_in

TRAIN, VALIDATION, TEST = 0, 1, 2


class HistoryView(Sequence):
    """A read-only window onto one member's timeline: list-like, without copying it per example."""

    __slots__ = ("_values", "_start", "_stop")

    def __init__(self, values: np.ndarray, start: int, stop: int):
        self._values, self._start, self._stop = values, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @property
    def start(self) -> int:
        """Where the window starts in the member's timeline (0 unless temporal_split's max_history cut it)."""
        return self._start

    def __getitem__(self, index):
        value = self._values[self._start:self._stop][index]
        if isinstance(index, slice):
            return value.tolist()
        return value.item() if isinstance(value, np.generic) else value  # numpy scalars → Python

    def __iter__(self):
        return iter(self._values[self._start:self._stop].tolist())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))


@dataclass(slots=True)
class TrainExample:
    user_id: str
    history: Sequence[str]            # item ids, oldest → newest, all before `positive`
    history_engaged: Sequence[bool]   # engaged (True) or impressed-only, per history item
    positive: str
    hard_negatives: list[str]         # impressed-not-engaged, nearest in time first
    timestamp: int                    # when the positive happened (unix s)
    cohort: str                       # "new" | "established"
    history_timestamps: Sequence[int] = ()


@dataclass(slots=True)
class EvalMember:
    user_id: str
    history: list[str]                # every interaction before the first target, oldest → newest
    history_engaged: list[bool]
    targets: list[str]                # held-out positives, in time order
    cohort: str
    timestamp: int = 0                # time of the first target: "now" for recency features
    history_timestamps: list[int] = field(default_factory=list)

    @property
    def engaged_history(self) -> list[str]:
        """The items the protocol removes from the ranking: those engaged with in the history."""
        return [item for item, engaged in zip(self.history, self.history_engaged) if engaged]


@dataclass
class Splits:
    train: list[TrainExample]
    validation: list[EvalMember]
    test: list[EvalMember]
    corpus_ids: list[str]
    period: np.ndarray                # int8 per row of tables.interactions: TRAIN / VALIDATION / TEST
    cohorts: dict[str, str]           # user_id → "new" | "established"
    settings: dict

    def __str__(self) -> str:
        new = sum(m.cohort == "new" for m in self.test)
        no_neg = sum(not e.hard_negatives for e in self.train)
        return (f"Splits({self.settings}): {len(self.train):,} train examples ({no_neg:,} without a hard "
                f"negative), {len(self.validation):,} validation members, {len(self.test):,} test members "
                f"({new:,} new, {len(self.test) - new:,} established), {len(self.corpus_ids):,} corpus items")


def _floor(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 1e-9).astype(np.int64)  # 0.2 * 35 must give 7, not 6


def assign_periods(interactions: pd.DataFrame, test_fraction: float = 0.2,
                   validation_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Period (TRAIN / VALIDATION / TEST) per interaction row, and which rows are positives.

    `interactions` must be time-sorted (FeedTables guarantees it). A positive is the first
    engagement of a member with an item; repeats are history, never targets.
    """
    if not (0 <= test_fraction < 1 and 0 <= validation_fraction < 1 and test_fraction + validation_fraction < 1):
        raise ValueError(f"fractions must be in [0, 1) and sum below 1, got test={test_fraction}, "
                         f"validation={validation_fraction}")
    n = len(interactions)
    engaged = interactions["engaged"].to_numpy(bool)
    users = factorize(interactions["user_id"])
    items = factorize(interactions["item_id"])
    positive = np.zeros(n, dtype=bool)
    engaged_rows = np.flatnonzero(engaged)
    pair = users[engaged_rows] * (items.max(initial=0) + 1) + items[engaged_rows]
    positive[engaged_rows[~pd.Series(pair).duplicated().to_numpy()]] = True
    pos_rows = np.flatnonzero(positive)
    pos_users = users[pos_rows]
    n_users = users.max() + 1 if n else 0
    count = np.bincount(pos_users, minlength=n_users)
    rank = pd.Series(pos_users).groupby(pos_users).cumcount().to_numpy()
    n_test = _floor(count * test_fraction)
    n_val = _floor(count * validation_fraction)
    big = np.iinfo(np.int64).max
    test_start = np.full(n_users, big)
    val_start = np.full(n_users, big)
    is_test = rank == (count - n_test)[pos_users]
    test_start[pos_users[is_test]] = pos_rows[is_test]
    is_val = (rank == (count - n_test - n_val)[pos_users]) & (n_val[pos_users] > 0)
    val_start[pos_users[is_val]] = pos_rows[is_val]
    val_start = np.minimum(val_start, test_start)
    rows = np.arange(n)
    period = np.where(rows >= test_start[users], TEST, np.where(rows >= val_start[users], VALIDATION, TRAIN))
    return period.astype(np.int8), positive


def _nearest_negatives(pos_t: np.ndarray, neg_t: np.ndarray, k: int, window: float) -> np.ndarray:
    """For each positive time, indices into neg_t of up to k nearest negatives within `window` (−1 = none)."""
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


def _cohorts(user_ids: list[str], pre_test_positives: np.ndarray, evaluated: np.ndarray,
             new_quantile: float) -> dict[str, str]:
    order = np.flatnonzero(evaluated)
    order = order[np.argsort(pre_test_positives[order], kind="stable")]
    new = set(order[: int(new_quantile * len(order))].tolist()) | set(np.flatnonzero(~evaluated).tolist())
    return {u: ("new" if i in new else "established") for i, u in enumerate(user_ids)}


def _check_not_empty(tables: FeedTables, period: np.ndarray, positive: np.ndarray, test_fraction: float) -> None:
    """Refuses, before any example is built, a split without training examples or (test_fraction
    above 0) without test members, naming the interactions file and what a member needs. An empty
    validation split is left to its users (a prepared dataset refuses it: ff_jax.data.prepared)."""
    source = tables.summary.tables["interactions"].source if "interactions" in tables.summary.tables else tables.name
    positives = tables.interactions["user_id"].to_numpy()[positive]
    most = int(pd.Series(positives).value_counts().max()) if len(positives) else 0

    def refuse(what: str, need: str):
        raise NotEnoughData(f"{source}: no {what}: a member needs {need}, and the most any member has is {most}; "
                            "add interactions, or change test_fraction / validation_fraction")

    if not (positive & (period == TRAIN)).any():
        refuse("training examples", "engaged items")
    if test_fraction > 0 and not (positive & (period == TEST)).any():
        refuse("test members", f"at least {int(np.ceil(1 / test_fraction - 1e-9))} engaged items for one test "
                               f"target at test_fraction={test_fraction:g}")


def temporal_split(tables: FeedTables, test_fraction: float = 0.2, validation_fraction: float = 0.1,
                   new_quantile: float = 0.25, max_hard_negatives: int = 2,
                   hard_negative_window_s: float = 7 * 86400, max_history: int | None = None,
                   progress: bool = True) -> Splits:
    """Split a dataset by time per member (see the module docstring for the protocol).

    max_history: keep only the newest N history items per example (None = all; prompts
    truncate to their token budget anyway). A split without training examples, or without test
    members while test_fraction is above 0, is a NotEnoughData error.
    """
    stats_split = tables.meta.get("item_stats_split")
    wanted = {"test_fraction": test_fraction, "validation_fraction": validation_fraction}
    if stats_split is not None and stats_split != wanted:
        raise ValueError(f"{tables.name}: item statistics were computed on the training period of split "
                         f"{stats_split}; splitting with {wanted} would leak later interactions into them. "
                         "Reload the dataset with the same fractions.")
    inter = tables.interactions
    period, positive = assign_periods(inter, test_fraction, validation_fraction)
    _check_not_empty(tables, period, positive, test_fraction)
    item_ids = inter["item_id"].to_numpy(dtype=object)
    engaged = inter["engaged"].to_numpy(bool)
    times = inter["timestamp"].to_numpy(np.int64)

    user_ids = tables.users["user_id"].tolist()
    codes = index_in(inter["user_id"], tables.users["user_id"])
    by_user = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_user], np.arange(len(user_ids) + 1))
    pre_test = np.bincount(codes[positive & (period != TEST)], minlength=len(user_ids))
    evaluated = np.bincount(codes[positive & (period == TEST)], minlength=len(user_ids)) > 0
    cohorts = _cohorts(user_ids, pre_test, evaluated, new_quantile)

    train, validation, test = [], [], []
    for u in tqdm(range(len(user_ids)), desc=f"splitting {tables.name}", unit="member",
                  disable=not progress, mininterval=1.0, leave=False):  # a sub-step of preparing data
        rows = by_user[bounds[u]:bounds[u + 1]]
        if len(rows) == 0:
            continue
        uid, cohort = user_ids[u], cohorts[user_ids[u]]
        items, eng, ts, per, pos = item_ids[rows], engaged[rows], times[rows], period[rows], positive[rows]
        train_pos = np.flatnonzero(pos & (per == TRAIN))
        liked = set(items[train_pos].tolist())
        neg = np.flatnonzero(~eng & (per == TRAIN))
        neg = neg[[item not in liked for item in items[neg]]] if len(neg) else neg
        nearest = _nearest_negatives(ts[train_pos], ts[neg], max_hard_negatives, hard_negative_window_s)
        for j, at in enumerate(train_pos.tolist()):
            start = 0 if max_history is None else max(0, at - max_history)
            train.append(TrainExample(uid, HistoryView(items, start, at), HistoryView(eng, start, at),
                                      items[at], list(dict.fromkeys(items[neg[k]] for k in nearest[j] if k >= 0)),
                                      int(ts[at]),
                                      cohort, HistoryView(ts, start, at)))
        for which, out in ((VALIDATION, validation), (TEST, test)):
            targets = np.flatnonzero(pos & (per == which))
            if len(targets):
                first = targets[0]
                out.append(EvalMember(uid, items[:first].tolist(), eng[:first].tolist(), items[targets].tolist(),
                                      cohort, int(ts[first]), ts[:first].tolist()))
    settings = dict(wanted, new_quantile=new_quantile, max_hard_negatives=max_hard_negatives,
                    hard_negative_window_s=hard_negative_window_s, max_history=max_history)
    return Splits(train, validation, test, tables.items["item_id"].tolist(), period, cohorts, settings)
