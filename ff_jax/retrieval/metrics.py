"""Retrieval-only figures, in numpy: ANN recall against exact search and the popularity-similarity
correlation. The ranking metrics (recall@K, NDCG@K, hit rate, MRR) and `top_k` live in
ff_jax.data.ranking_metrics, so that training's periodic validation and the test reports here
compute them with the same code."""

from __future__ import annotations

from typing import Any

import numpy as np

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
