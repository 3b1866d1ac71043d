"""Retrieval-only figures, in numpy: ANN recall against exact search and the popularity-similarity
correlation. The ranking metrics (recall@K, NDCG@K, hit rate, MRR) and `top_k` live in
ff_jax.data.ranking_metrics, so that training's periodic validation and the test reports here
compute them with the same code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ff_jax.data import ranking_metrics as rm
from ff_jax.data.ranking_metrics import row_membership


def ann_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx[q] ∩ exact[q]| / k: how much of the exact top-k an ANN found."""
    approx, exact = np.asarray(approx), np.asarray(exact)
    if approx.ndim != 2 or approx.shape != exact.shape:
        raise ValueError(f"approx {approx.shape} and exact {exact.shape} must both be [queries, k]")
    return float(row_membership(approx, exact).mean())


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank where each distinct value starts
    return (first + (counts + 1) / 2.0)[inverse.ravel()]


def correlation(x: Any, y: Any, method: str = "spearman") -> float:
    """Pearson or Spearman (Pearson of average ranks) correlation; NaN if either input is constant.

    The paper's popularity check: x = item popularity, y = member-item cosine.
    """
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"correlation needs two equal-length inputs of 2+ values, got {x.size} and {y.size}")
    if method == "spearman":
        x, y = average_ranks(x), average_ranks(y)
    elif method != "pearson":
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else float("nan")


# ----------------------------------------------------------------------------- ranking at scale
#
# `top_k` and `ranking_figures` give exactly what ff_jax.data.ranking_metrics' `top_k` and
# `ranking_metrics` give (tests/retrieval/test_evaluate.py checks them against plain per-member
# references), with less work per member: `ff-jax eval` ranks ~13k members x ~15k items per model.

def places_in_rows(rows: np.ndarray) -> np.ndarray:
    """For entries sorted by row (`rows` ascending): each entry's place within its row, 0 first.
    Keeping `place < k` keeps each row's first k entries."""
    return np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")


def top_k(scores: np.ndarray, excluded: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Positions [U, k] of each row's k best scores, best first; ties go to the lower position.

    The contract (and result) of ff_jax.data.ranking_metrics.top_k: `excluded[u]` holds positions
    row u must not return; slots beyond the rankable items (excluded or -inf) are -1. One float
    partition finds each row's k-th best score; only the scores at least that good (k of them, more
    on ties) are sorted. At a million items this is 4 passes over the scores where building a unique
    integer key per score took 9: 0.16 s instead of 0.42 s for 33 members x 1M items at k = 2,000
    on the 2-core CPU (0.16 s is also what their scores' matmul takes)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [members, items], got shape {scores.shape}")
    if len(excluded) != scores.shape[0]:
        raise ValueError(f"{len(excluded)} exclusion lists for {scores.shape[0]} score rows")
    if not 0 < k:
        raise ValueError(f"k must be positive, got {k}")
    users, n = scores.shape
    negated = np.negative(scores, dtype=np.float32)  # ascending = best first; a copy we may write
    if np.isnan(negated).any():
        raise ValueError(f"scores row {int(np.argwhere(np.isnan(negated))[0, 0])} contains NaN")
    lengths = [len(e) for e in excluded]
    if sum(lengths):
        cols = np.concatenate([np.asarray(e, np.int64).ravel() for e in excluded])
        negated[np.repeat(np.arange(users), lengths), cols] = np.inf  # as unrankable as a -inf score
    k = min(k, n)
    if k < n:
        kth = np.partition(negated, k - 1, axis=1)[:, k - 1:k]
        # the k best, and any tied with the k-th (flat: 2-D np.nonzero is 15x slower here)
        rows, cols = np.divmod(np.flatnonzero(negated <= kth), n)
    else:
        rows, cols = np.divmod(np.arange(users * n), n)
    values = negated[rows, cols]
    order = np.lexsort((cols, values, rows))  # by row, then best first, then lower position
    rows, cols, values = rows[order], cols[order], values[order]
    place = places_in_rows(rows)
    keep = (place < k) & (values < np.inf)  # -inf scores and excluded items are never returned
    ranked = np.full((users, k), -1, np.int64)
    ranked[rows[keep], place[keep]] = cols[keep]
    return ranked


def target_hits(ranked: np.ndarray, targets: Sequence[np.ndarray], n_items: int,
                fresh: np.ndarray | None = None, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(kind int8 [U, K], distinct targets int64 [U, 2]) of corpus-position rankings.

    kind: 0 = no target, 1 = a target, 2 = a target whose item `fresh` flags (bool [n_items]);
    distinct targets per member: [:, 0] not fresh, [:, 1] fresh. A dense [chunk, n_items] lookup
    table per chunk of members replaces ranking_metrics.row_membership's sort of every ranked id;
    -1 (an unfilled slot) reads the always-empty column n_items."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(targets) != ranked.shape[0]:
        raise ValueError(f"ranked {ranked.shape} needs one target list per row ({len(targets)} given)")
    is_fresh = np.zeros(n_items + 1, np.int8) if fresh is None else np.append(np.asarray(fresh, bool), False).astype(np.int8)
    users, depth = ranked.shape
    kind = np.zeros((users, depth), np.int8)
    sizes = np.zeros((users, 2), np.int64)
    for start in range(0, users, chunk):
        stop = min(start + chunk, users)
        lists = targets[start:stop]
        table = np.zeros((stop - start, n_items + 1), np.int8)
        lengths = [len(t) for t in lists]
        if sum(lengths):
            cols = np.concatenate([np.asarray(t, np.int64).ravel() for t in lists])
            table[np.repeat(np.arange(stop - start), lengths), cols] = 1 + is_fresh[cols]
        sizes[start:stop, 0] = (table == 1).sum(axis=1)
        sizes[start:stop, 1] = (table == 2).sum(axis=1)
        kind[start:stop] = np.take_along_axis(table, ranked[start:stop].astype(np.int64) % (n_items + 1), axis=1)
    return kind, sizes


def _per_user(hits: np.ndarray, sizes: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """ranking_metrics' per-user figures, in its key order, from its own functions."""
    per_user = {"mrr": rm.reciprocal_rank(hits)}
    for k in ks:
        per_user[f"recall@{k}"] = rm.recall_at_k(hits, sizes, k)
        per_user[f"ndcg@{k}"] = rm.ndcg_at_k(hits, sizes, k)
        per_user[f"hit_rate@{k}"] = rm.hit_rate_at_k(hits, k)
    return per_user


def ranking_figures(ranked: np.ndarray, targets: Sequence[np.ndarray], n_items: int, ks: Sequence[int],
                    cohorts: Sequence[str] | None = None, fresh: np.ndarray | None = None
                    ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(metrics, by_target) of corpus-position rankings against target positions.

    metrics: what ff_jax.data.ranking_metrics.ranking_metrics returns (identical floats: the same
    per-user functions on the same hit matrix, averaged the same way). by_target: {"fresh", "seen"}
    -> recall@K and NDCG@K for every K with only that kind of target relevant (`fresh` flags the
    items; the other targets count as misses), averaged over the members with at least one such
    target ("users"), and "targets": how many distinct targets of that kind there are. Empty when
    `fresh` is None."""
    kind, split_sizes = target_hits(ranked, targets, n_items, fresh)
    hits, sizes = kind > 0, split_sizes.sum(axis=1)
    if sizes.size and (sizes == 0).any():
        raise ValueError(f"targets[{int(np.argmin(sizes))}] is empty: evaluate only users with targets")
    for k in ks:
        if k <= 0 or k > hits.shape[1]:
            raise ValueError(f"K={k} is outside the ranked lists' length 1..{hits.shape[1]}")
    metrics = rm.cohort_means(_per_user(hits, sizes, ks), cohorts, hits.shape[0])
    by_target = {}
    if fresh is not None:
        for name, value, column in (("fresh", 2, 1), ("seen", 1, 0)):
            has = split_sizes[:, column] > 0
            hits_of = kind[has] == value
            size_of = split_sizes[has, column]
            figures = {"targets": float(size_of.sum()), "users": float(has.sum())}
            for k in ks:
                figures[f"recall@{k}"] = float(rm.recall_at_k(hits_of, size_of, k).mean()) if has.any() else float("nan")
                figures[f"ndcg@{k}"] = float(rm.ndcg_at_k(hits_of, size_of, k).mean()) if has.any() else float("nan")
            by_target[name] = figures
    return metrics, by_target
