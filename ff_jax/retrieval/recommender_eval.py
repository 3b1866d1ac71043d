"""Evaluating one recommender: rank the corpus for each member (leaving out what `exclude` says),
then score the ranking against the held-out targets (the protocol: ff_jax.retrieval.evaluate).

Its own module so that what needs only this (`select_on_validation` in ff_jax.retrieval.baselines)
does not import the `ff-jax eval` job, which itself lists the baselines.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.metrics import ranking_figures, top_k  # ranking_metrics' results, batched for ~10^4 members
from ff_jax.retrieval.recommender import Recommender, TrainingData

DEFAULT_KS = (10, 50, 100, 1000)
RANK_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
SERVING_K = 2000
EXCLUDE_MODES = ("engaged", "history", "none")


def excluded_items(members: Sequence[EvalMember], mode: str) -> list[list[str]]:
    """The item ids each member's ranking must leave out under `mode` (see EXCLUDE_MODES)."""
    if mode == "engaged":
        return [m.engaged_history for m in members]
    if mode == "history":
        return [list(m.history) for m in members]
    if mode == "none":
        return [[] for _ in members]
    raise ValueError(f"exclude must be one of {EXCLUDE_MODES}, got {mode!r}")


def rank(recommender: Recommender, members: Sequence[EvalMember], data: TrainingData, k: int,
         exclude: str = "engaged", batch_size: int | None = None, progress: bool = True) -> np.ndarray:
    """Corpus positions [members, min(k, corpus)] ranked by `recommender`, -1 where nothing is left.

    Members are scored `batch_size` at a time (default: up to 256, fewer for big corpora so a
    batch's score matrix stays near 128 MB), in order, in this thread; each batch's top-k runs on
    one of RANK_THREADS threads (numpy's partition and sort release the GIL) while the next batch
    is scored. The result does not depend on the threads: top-k keys are unique per row."""
    batch_size = batch_size or int(np.clip((1 << 25) // max(data.num_items, 1), 1, 256))
    excluded = [data.positions(e) for e in excluded_items(members, exclude)]
    out, pending = [], collections.deque()
    with ThreadPoolExecutor(RANK_THREADS) as pool:
        for start in tqdm(range(0, len(members), batch_size), desc=f"ranking ({getattr(recommender, 'name', '')})",
                          unit="batch", disable=not progress, mininterval=1.0):
            batch = members[start : start + batch_size]
            scores = np.asarray(recommender.score(batch))
            if scores.shape != (len(batch), data.num_items):
                raise ValueError(f"{type(recommender).__name__}.score returned shape {scores.shape}; expected "
                                 f"({len(batch)}, {data.num_items}) = (members, corpus items)")
            pending.append(pool.submit(top_k, scores, excluded[start : start + batch_size], k))
            if len(pending) > RANK_THREADS:  # at most RANK_THREADS + 1 batches of scores held at once
                out.append(pending.popleft().result())
        out.extend(job.result() for job in pending)
    return np.concatenate(out) if out else np.zeros((0, min(k, data.num_items)), np.int64)


def cutoffs(ks: Sequence[int], serving_k: int | None, corpus: int) -> list[int]:
    """The K values reported: `ks` below the corpus size, plus the serving count capped at it."""
    chosen = sorted({k for k in ks if k <= corpus} | ({min(serving_k, corpus)} if serving_k else set()))
    if not chosen or chosen[0] < 1:
        raise ValueError(f"no valid K among ks={list(ks)}, serving_k={serving_k} for a corpus of {corpus}")
    return chosen


def metrics_of_ranking(ranked: np.ndarray, members: Sequence[EvalMember], data: TrainingData,
                       ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """ranking_metrics over members with targets, keyed "all" / cohort; positions as ids."""
    return figures_of_ranking(ranked, members, data, ks, by_freshness=False)[0]


def fresh_items(data: TrainingData) -> np.ndarray:
    """bool [corpus items]: the items with no engagement in `data`, the interaction matrix the
    recommenders are fit on (for the test split: the training and validation periods). A target
    is "fresh" when its item is one of them: ID-based baselines know nothing about it."""
    return data.popularity() == 0


def figures_of_ranking(ranked: np.ndarray, members: Sequence[EvalMember], data: TrainingData, ks: Sequence[int],
                       by_freshness: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(metrics_of_ranking, freshness): freshness = {"fresh", "seen"} -> "targets" (how many
    distinct targets of that kind), "users" (members with one), recall@K and NDCG@K with only that
    kind of target relevant, averaged over those members (see metrics.ranking_figures); {} when
    `by_freshness` is False. Fresh: see `fresh_items`."""
    keep = [i for i, m in enumerate(members) if m.targets]
    if not keep:
        raise ValueError("no evaluated member has a target")
    targets = [data.positions(members[i].targets) for i in keep]
    return ranking_figures(ranked[keep], targets, data.num_items, ks, [members[i].cohort for i in keep],
                           fresh_items(data) if by_freshness else None)


def evaluate_recommender(recommender: Recommender, members: Sequence[EvalMember], data: TrainingData,
                         ks: Sequence[int] = DEFAULT_KS, serving_k: int | None = SERVING_K,
                         exclude: str = "engaged", progress: bool = True) -> dict:
    """The metrics report of a fitted recommender on `members` (see the module docstring)."""
    chosen = cutoffs(ks, serving_k, data.num_items)
    ranked = rank(recommender, members, data, max(chosen), exclude, progress=progress)
    figures, freshness = figures_of_ranking(ranked, members, data, chosen)
    return {"name": getattr(recommender, "name", type(recommender).__name__), "members": len(members),
            "corpus": data.num_items, "ks": chosen, "exclude": exclude, "metrics": figures, "freshness": freshness}
