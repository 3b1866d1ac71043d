"""Ranking held-out targets, in numpy: the one code that turns scores into figures, for periodic
validation during training (ff_jax.train.loop.Validator) and for test reports (ff_jax.retrieval).

Why in `data`: packages import only downward (model → data → train → retrieval), and this is the
lowest package both users may import. It also sits beside the rest of the evaluation protocol:
`ff_jax.data.splits` decides which items are a member's targets and history, this module decides
how a ranking of them is scored. It needs numpy only.

    ranked = top_k(member_vectors @ item_vectors.T, excluded_positions, k=100)
    report = ranking_metrics(ranked, target_positions, ks=(10, 50, 100), cohorts=labels)

Definitions (binary relevance; `ranked[u]` is user u's ranked list, `targets[u]` the held-out
positives, T_u = |targets[u]| after removing duplicates):

    recall@K   = |ranked[u][:K] ∩ targets[u]| / T_u
    hit_rate@K = 1 if ranked[u][:K] ∩ targets[u] is non-empty else 0
    NDCG@K     = DCG / IDCG, DCG = Σ_{j<K, ranked[u][j] ∈ targets[u]} 1 / log2(j + 2),
                 IDCG = Σ_{j < min(T_u, K)} 1 / log2(j + 2)
    MRR        = 1 / (1 + position of the first hit in the whole ranked list), 0 without a hit

Every metric is averaged over users (each user weighs the same). Ranked lists should not hold
duplicates (a duplicate hit would count twice).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np


def row_membership(values: np.ndarray, sets: Sequence[Collection[Any]] | np.ndarray) -> np.ndarray:
    """bool [Q, F]: True where values[q, f] is in sets[q]. One vectorised pass over all rows.

    `sets` is one collection per row, or a 2-D array (row q = the members of set q).
    """
    values = np.asarray(values)
    if isinstance(sets, np.ndarray) and sets.ndim == 2:
        flat, lengths = sets.ravel(), np.full(sets.shape[0], sets.shape[1], dtype=np.int64)
    else:
        lists = [list(x) if x is not None else [] for x in sets]
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        flat = np.asarray([x for row in lists for x in row])
    if lengths.shape[0] != values.shape[0]:
        raise ValueError(f"{lengths.shape[0]} sets for {values.shape[0]} rows")
    if lengths.sum() == 0:
        return np.zeros(values.shape, dtype=bool)
    if values.dtype.kind == "U":
        flat = flat.astype(str)
    elif flat.dtype.kind not in "iu" or values.dtype.kind not in "iu":
        raise ValueError(f"cannot compare {flat.dtype} ids with {values.dtype} ids")
    # Joint integer codes turn (row, id) pairs into single int64 keys for one np.isin call.
    _, codes = np.unique(np.concatenate([values.ravel(), flat]), return_inverse=True)
    codes = codes.ravel()
    n_codes = int(codes.max()) + 1
    value_keys = np.repeat(np.arange(values.shape[0], dtype=np.int64), values.shape[1]) * n_codes
    set_keys = np.repeat(np.arange(lengths.shape[0], dtype=np.int64), lengths) * n_codes
    value_keys += codes[: values.size]
    set_keys += codes[values.size :]
    return np.isin(value_keys, set_keys).reshape(values.shape)


def top_k(scores: np.ndarray, excluded: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Positions [U, k] of each row's k best scores, best first; ties go to the lower position.

    `excluded[u]` holds positions row u must not return; slots beyond the rankable items are -1.
    """
    scores = np.array(scores, dtype=np.float32)  # a copy: excluded entries are overwritten
    if scores.ndim != 2:
        raise ValueError(f"scores must be [members, items], got shape {scores.shape}")
    if len(excluded) != scores.shape[0]:
        raise ValueError(f"{len(excluded)} exclusion lists for {scores.shape[0]} score rows")
    if np.isnan(scores).any():
        raise ValueError(f"scores row {int(np.argwhere(np.isnan(scores))[0, 0])} contains NaN")
    users, n = scores.shape
    if not 0 < k:
        raise ValueError(f"k must be positive, got {k}")
    rows = np.repeat(np.arange(users), [len(e) for e in excluded])
    if rows.size:
        scores[rows, np.concatenate([np.asarray(list(e), np.int64) for e in excluded])] = -np.inf
    k = min(k, n)
    if k < n:
        # The k-th best score per row; keep everything above it and, among the ties at it, the
        # lowest positions, so results do not depend on argpartition's internal order.
        kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
        above = scores > kth
        ties = scores == kth
        room = k - above.sum(axis=1, keepdims=True)
        keep = above | (ties & (np.cumsum(ties, axis=1) <= room))
        candidates = np.nonzero(keep)[1].reshape(users, k)
    else:
        candidates = np.broadcast_to(np.arange(n), (users, n))
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=-1)
    ranked = np.take_along_axis(candidates, order, axis=1)
    return np.where(np.take_along_axis(values, order, axis=1) == -np.inf, -1, ranked)


def hit_matrix(ranked: np.ndarray, targets: Sequence[Collection[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(hits bool [U, K], number of distinct targets int [U]); every user needs a target."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-D [users, K] array, got shape {ranked.shape}")
    if len(targets) != ranked.shape[0]:
        raise ValueError(f"targets has {len(targets)} entries for {ranked.shape[0]} ranked lists")
    target_sets = [set(t) for t in targets]
    sizes = np.array([len(t) for t in target_sets], dtype=np.int64)
    if sizes.size and (sizes == 0).any():
        raise ValueError(f"targets[{int(np.argmin(sizes))}] is empty: evaluate only users with targets")
    return row_membership(ranked, target_sets), sizes


def _check_k(hits: np.ndarray, k: int) -> None:
    if k <= 0 or k > hits.shape[1]:
        raise ValueError(f"K={k} is outside the ranked lists' length 1..{hits.shape[1]}")


def recall_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    return hits[:, :k].sum(axis=1) / n_targets


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    return hits[:, :k].any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, n_targets: np.ndarray, k: int) -> np.ndarray:
    _check_k(hits, k)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = hits[:, :k] @ discounts
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(n_targets, k)]
    return dcg / ideal


def reciprocal_rank(hits: np.ndarray) -> np.ndarray:
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)


def ranking_metrics(
    ranked: np.ndarray,
    targets: Sequence[Collection[Any]],
    ks: Sequence[int] = (10, 50, 100),
    cohorts: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """{"all": {...}, <cohort>: {...}} of user-averaged recall/hit_rate/NDCG@K, MRR and user count."""
    hits, sizes = hit_matrix(ranked, targets)
    per_user = {"mrr": reciprocal_rank(hits)}
    for k in ks:
        per_user[f"recall@{k}"] = recall_at_k(hits, sizes, k)
        per_user[f"ndcg@{k}"] = ndcg_at_k(hits, sizes, k)
        per_user[f"hit_rate@{k}"] = hit_rate_at_k(hits, k)
    return cohort_means(per_user, cohorts, hits.shape[0])


def cohort_means(per_user: dict[str, np.ndarray], cohorts: Sequence[str] | None, users: int) -> dict[str, dict[str, float]]:
    """{"all": ..., <cohort>: ...}: each per-user metric averaged over the users of each group, and
    the group's user count (NaN for a metric of an empty group)."""
    groups = {"all": np.ones(users, dtype=bool)}
    if cohorts is not None:
        labels = np.asarray(cohorts)
        if labels.shape != (users,):
            raise ValueError(f"cohorts has shape {labels.shape}; expected one label per user ({users})")
        groups.update({str(c): labels == c for c in np.unique(labels)})
    mean = lambda v, mask: float(v[mask].mean()) if mask.any() else float("nan")  # noqa: E731
    return {name: {"users": float(mask.sum()), **{m: mean(v, mask) for m, v in per_user.items()}}
            for name, mask in groups.items()}
