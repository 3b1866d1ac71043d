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


class _Lazy(Sequence):
    """A split's examples as Python objects, built from SplitColumns when first read: the store
    writes from the columns and never pays for 10⁶ objects. Indexing, slicing, iteration and `+`
    behave as on the list it holds."""

    def __init__(self, build, length: int):
        self._build, self._list, self._length = build, None, length

    @property
    def rows(self) -> list:
        if self._list is None:
            self._list = self._build()
        return self._list

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        return self.rows[index]

    def __iter__(self):
        return iter(self.rows)

    def __add__(self, other):
        return self.rows + list(other)

    def __radd__(self, other):
        return list(other) + self.rows

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and self.rows == list(other)

    def __repr__(self) -> str:
        return repr(self.rows)


@dataclass
class SplitColumns:
    """The splits as arrays over the member timeline: `timeline` holds the interaction rows grouped
    by member (the users table's order), oldest first; member m owns timeline[bounds[m]:bounds[m + 1]].
    Every other position here is a position in `timeline` ("at"), so a history is the member's
    timeline from its start to `at` (exclusive)."""

    timeline: np.ndarray            # int64 interaction row per timeline position
    bounds: np.ndarray              # int64 [members + 1]
    member: np.ndarray              # int64 member (users row) per timeline position
    train_at: np.ndarray            # the positive of each training example, in example order
    negative_offsets: np.ndarray    # example i's hard negatives: negatives[offsets[i]:offsets[i + 1]]
    negatives: np.ndarray           # timeline positions, nearest in time first, one per distinct item
    eval_first: dict[str, np.ndarray]    # "validation" / "test": each evaluated member's first target
    target_offsets: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]       # timeline positions of the held-out positives, in time order
    cohort_new: np.ndarray          # bool per member: in the "new" cohort

    def count(self, split: str) -> int:
        return len(self.train_at) if split == "train" else len(self.eval_first[split])

    def end(self, at: np.ndarray) -> np.ndarray:
        """How many of its member's interactions come before each timeline position."""
        return at - self.bounds[self.member[at]]


class Splits:
    """train / validation / test (lists of TrainExample / EvalMember, built when first read), the
    same splits as arrays (`columns`), the period of every interaction row and the cohorts."""

    def __init__(self, tables: FeedTables, columns: SplitColumns, period: np.ndarray, cohorts: dict[str, str],
                 settings: dict):
        self.columns, self.period, self.cohorts, self.settings = columns, period, cohorts, settings
        self.corpus_ids: list[str] = tables.items["item_id"].tolist()
        self._tables = tables
        self._timeline_values = None
        self.train = _Lazy(self._train, columns.count("train"))
        self.validation = _Lazy(lambda: self._eval("validation"), columns.count("validation"))
        self.test = _Lazy(lambda: self._eval("test"), columns.count("test"))

    def count(self, split: str) -> int:
        """Examples (train) or evaluated members (validation / test), without building them."""
        return self.columns.count(split)

    def __str__(self) -> str:
        c = self.columns
        new = int(c.cohort_new[c.member[c.eval_first["test"]]].sum())
        n_test = c.count("test")
        no_neg = int((np.diff(c.negative_offsets) == 0).sum())
        return (f"Splits({self.settings}): {c.count('train'):,} train examples ({no_neg:,} without a hard "
                f"negative), {c.count('validation'):,} validation members, {n_test:,} test members "
                f"({new:,} new, {n_test - new:,} established), {len(self.corpus_ids):,} corpus items")

    def _values(self):
        """Item ids, engagement flags and times in timeline order (Python-facing arrays)."""
        if self._timeline_values is None:
            inter, rows = self._tables.interactions, self.columns.timeline
            self._timeline_values = (inter["item_id"].to_numpy(dtype=object)[rows],
                                     inter["engaged"].to_numpy(bool)[rows],
                                     inter["timestamp"].to_numpy(np.int64)[rows])
        return self._timeline_values

    def _user_ids(self) -> list[str]:
        return self._tables.users["user_id"].tolist()

    def _cohort(self, member: int) -> str:
        return "new" if self.columns.cohort_new[member] else "established"

    def _train(self) -> list[TrainExample]:
        c, max_history = self.columns, self.settings.get("max_history")
        items, engaged, times = self._values()
        user_ids, out = self._user_ids(), []
        ends, members, offsets = c.end(c.train_at).tolist(), c.member[c.train_at].tolist(), c.negative_offsets
        negative_items = items[c.negatives]
        for i, (at, m, end) in enumerate(zip(c.train_at.tolist(), members, ends)):
            lo = int(c.bounds[m])
            start = 0 if max_history is None else max(0, end - max_history)
            own = slice(lo, int(c.bounds[m + 1]))  # views of the member's timeline, not copies
            out.append(TrainExample(user_ids[m], HistoryView(items[own], start, end),
                                    HistoryView(engaged[own], start, end), items[at],
                                    negative_items[offsets[i]:offsets[i + 1]].tolist(), int(times[at]),
                                    self._cohort(m), HistoryView(times[own], start, end)))
        return out

    def _eval(self, split: str) -> list[EvalMember]:
        c = self.columns
        items, engaged, times = self._values()
        user_ids, out = self._user_ids(), []
        first, offsets, targets = c.eval_first[split], c.target_offsets[split], c.targets[split]
        for i, (at, m) in enumerate(zip(first.tolist(), c.member[first].tolist())):
            lo = int(c.bounds[m])
            out.append(EvalMember(user_ids[m], items[lo:at].tolist(), engaged[lo:at].tolist(),
                                  items[targets[offsets[i]:offsets[i + 1]]].tolist(), self._cohort(m),
                                  int(times[at]), times[lo:at].tolist()))
        return out


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


def _run_starts(member: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Per timeline position, the first position of its member holding the same time."""
    n = len(member)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (member[1:] != member[:-1]) | (times[1:] != times[:-1])
    return np.maximum.accumulate(np.where(new_run, np.arange(n), 0)) if n else np.zeros(0, np.int64)


def hard_negatives(member: np.ndarray, times: np.ndarray, items: np.ndarray, is_negative: np.ndarray,
                   positive_at: np.ndarray, k: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to k negatives per positive: its member's negative positions nearest in time within
    `window` (ties: the earlier first), then repeats of an item dropped. Returns (offsets, positions).

    All arguments are over one timeline (grouped by member, time-sorted within a member): the
    candidates of a positive are the k negatives before it in time and the k from its time on, as
    a binary search in the member's negative times would give them."""
    negative_at = np.flatnonzero(is_negative)
    if k == 0 or len(negative_at) == 0 or len(positive_at) == 0:
        return np.zeros(len(positive_at) + 1, np.int64), np.zeros(0, np.int64)
    before = np.concatenate([[0], np.cumsum(is_negative)])  # negatives at positions < p
    starts = np.flatnonzero(np.r_[True, member[1:] != member[:-1]])
    ends = np.r_[starts[1:], len(member)]
    run = np.searchsorted(starts, positive_at, side="right") - 1
    lo, hi = before[starts[run]], before[ends[run]]  # the member's negatives: negative_at[lo:hi]
    at = before[_run_starts(member, times)[positive_at]]  # first negative not earlier than the positive
    candidate = at[:, None] + np.arange(-k, k)[None, :]
    valid = (candidate >= lo[:, None]) & (candidate < hi[:, None])
    clipped = negative_at[np.clip(candidate, 0, len(negative_at) - 1)]
    dt = np.abs(times[clipped] - times[positive_at][:, None]).astype(float)
    dt[~valid | (dt > window)] = np.inf
    order = np.argsort(dt, axis=1, kind="stable")[:, :k]
    keep = np.isfinite(np.take_along_axis(dt, order, 1))
    pick = np.take_along_axis(clipped, order, 1)
    item = items[pick]
    for j in range(1, k):  # an item already picked nearer in time is not repeated
        for i in range(j):
            keep[:, j] &= ~(keep[:, i] & (item[:, i] == item[:, j]))
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return offsets, pick[keep]


def _cohorts(user_ids: list[str], pre_test_positives: np.ndarray, evaluated: np.ndarray,
             new_quantile: float) -> np.ndarray:
    """bool per member: in the "new" cohort."""
    order = np.flatnonzero(evaluated)
    order = order[np.argsort(pre_test_positives[order], kind="stable")]
    new = ~evaluated
    new[order[: int(new_quantile * len(order))]] = True
    return new


def _check_not_empty(tables: FeedTables, period: np.ndarray, positive: np.ndarray, test_fraction: float) -> None:
    """Refuses, before any example is built, a split without training examples or (test_fraction
    above 0) without test members, naming the interactions file and what a member needs. An empty
    validation split is left to its users (a prepared dataset refuses it: ff_jax.data.prepared)."""
    source = tables.summary.tables["interactions"].source if "interactions" in tables.summary.tables else tables.name

    def refuse(what: str, need: str):
        positives = tables.interactions["user_id"].to_numpy()[positive]
        most = int(pd.Series(positives).value_counts().max()) if len(positives) else 0
        raise NotEnoughData(f"{source}: no {what}: a member needs {need}, and the most any member has is {most}; "
                            "add interactions, or change test_fraction / validation_fraction")

    if not (positive & (period == TRAIN)).any():
        refuse("training examples", "engaged items")
    if test_fraction > 0 and not (positive & (period == TEST)).any():
        refuse("test members", f"at least {int(np.ceil(1 / test_fraction - 1e-9))} engaged items for one test "
                               f"target at test_fraction={test_fraction:g}")


def _grouped(member: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions `at` (ascending) grouped by member: (each member's first, offsets into `at`)."""
    if len(at) == 0:
        return at, np.zeros(1, np.int64)
    starts = np.flatnonzero(np.r_[True, member[at][1:] != member[at][:-1]])
    return at[starts], np.r_[starts, len(at)].astype(np.int64)


def temporal_split(tables: FeedTables, test_fraction: float = 0.2, validation_fraction: float = 0.1,
                   new_quantile: float = 0.25, max_hard_negatives: int = 2,
                   hard_negative_window_s: float = 7 * 86400, max_history: int | None = None,
                   progress: bool = True) -> Splits:
    """Split a dataset by time per member (see the module docstring for the protocol).

    max_history: keep only the newest N history items per example (None = all; prompts
    truncate to their token budget anyway). A split without training examples, or without test
    members while test_fraction is above 0, is a NotEnoughData error. Computed with array
    operations over all members at once (tests/data/test_split_parity.py checks them against the
    per-member loop they replace); `progress` is accepted for callers and shows nothing.
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

    user_ids = tables.users["user_id"].tolist()
    codes = index_in(inter["user_id"], tables.users["user_id"])
    timeline = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[timeline], np.arange(len(user_ids) + 1))
    member, per, pos = codes[timeline], period[timeline], positive[timeline]
    times = inter["timestamp"].to_numpy(np.int64)[timeline]
    items = factorize(inter["item_id"])[timeline]
    engaged = inter["engaged"].to_numpy(bool)[timeline]
    known = member >= 0
    if ((np.diff(times) < 0) & (member[1:] == member[:-1]) & known[1:]).any():
        raise ValueError(f"{tables.name}: interactions must be sorted by time (FeedTables are)")

    pre_test = np.bincount(codes[positive & (period != TEST)], minlength=len(user_ids))
    evaluated = np.bincount(codes[positive & (period == TEST)], minlength=len(user_ids)) > 0
    cohort_new = _cohorts(user_ids, pre_test, evaluated, new_quantile)
    cohorts = {u: ("new" if new else "established") for u, new in zip(user_ids, cohort_new.tolist())}

    in_train = known & (per == TRAIN)
    train_at = np.flatnonzero(in_train & pos)
    # Negatives: impressed, not engaged, in the training period, and not an item the member engaged with there.
    n_items = int(items.max(initial=0)) + 1
    liked = np.unique(member[train_at] * n_items + items[train_at])
    is_negative = in_train & ~engaged
    candidates = np.flatnonzero(is_negative)
    is_negative[candidates[np.isin(member[candidates] * n_items + items[candidates], liked)]] = False
    offsets, negatives = hard_negatives(member, times, items, is_negative, train_at, max_hard_negatives,
                                        hard_negative_window_s)
    eval_first, target_offsets, targets = {}, {}, {}
    for which, name in ((VALIDATION, "validation"), (TEST, "test")):
        at = np.flatnonzero(known & pos & (per == which))
        eval_first[name], target_offsets[name] = _grouped(member, at)
        targets[name] = at
    columns = SplitColumns(timeline, bounds, member, train_at, offsets, negatives, eval_first, target_offsets,
                           targets, cohort_new)
    settings = dict(wanted, new_quantile=new_quantile, max_hard_negatives=max_hard_negatives,
                    hard_negative_window_s=hard_negative_window_s, max_history=max_history)
    return Splits(tables, columns, period, cohorts, settings)
