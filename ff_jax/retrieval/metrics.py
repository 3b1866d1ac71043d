"""Offline retrieval metrics, vectorised in numpy.

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

from ff_jax.retrieval.filters import row_membership


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
    groups = {"all": np.ones(hits.shape[0], dtype=bool)}
    if cohorts is not None:
        labels = np.asarray(cohorts)
        if labels.shape != (hits.shape[0],):
            raise ValueError(f"cohorts has shape {labels.shape}; expected one label per user ({hits.shape[0]})")
        groups.update({str(c): labels == c for c in np.unique(labels)})
    return {
        name: {"users": float(mask.sum()), **{m: float(v[mask].mean()) if mask.any() else float("nan") for m, v in per_user.items()}}
        for name, mask in groups.items()
    }


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
