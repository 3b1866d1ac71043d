"""Two rankings of the same members compared member by member: the mean per-member change of a
metric with a 95% paired bootstrap interval over members (scipy's BCa).

It says whether a difference is more than the noise of which members happen to be in the split.
It cannot say whether it is more than seed noise, so it is the evidence for one-seed comparisons
(a reranker against its retriever, two MovieLens variants trained once each).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats

from ff_jax.data.ranking_metrics import hit_matrix, ndcg_at_k, recall_at_k

PER_MEMBER = {"recall": recall_at_k, "ndcg": ndcg_at_k}


def paired_change(before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict:
    """{"mean", "ci95": [low, high], "members"} of after - before, one value per member."""
    change = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    if not change.any():
        return {"mean": 0.0, "ci95": [0.0, 0.0], "members": len(change)}
    interval = scipy.stats.bootstrap((change,), np.mean, confidence_level=0.95, n_resamples=2000,
                                     rng=np.random.default_rng(seed)).confidence_interval
    return {"mean": float(change.mean()), "ci95": [float(interval.low), float(interval.high)], "members": len(change)}


def per_member(ranked: np.ndarray, members, data, metric: str) -> np.ndarray:
    """metric ("recall@10", "ndcg@100", ...) of each member with a target, in member order."""
    name, k = metric.split("@")
    keep = [i for i, m in enumerate(members) if m.targets]
    hits, sizes = hit_matrix(ranked[keep], [data.positions(members[i].targets) for i in keep])
    return PER_MEMBER[name](hits, sizes, int(k))


def compare_rankings(before: np.ndarray, after: np.ndarray, members, data,
                     metrics: Sequence[str] = ("recall@10", "ndcg@10"), seed: int = 0) -> dict[str, dict]:
    """metric -> paired_change from `before` to `after` (corpus positions [members, K], same members)."""
    if before.shape[0] != after.shape[0]:
        raise ValueError(f"rankings of {before.shape[0]} and {after.shape[0]} members: compare the same members")
    return {m: paired_change(per_member(before, members, data, m), per_member(after, members, data, m), seed)
            for m in metrics}
