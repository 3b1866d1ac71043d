"""Post-retrieval filters: drop items the member already saw and items by authors they blocked.

A filter can only remove candidates, so `filtered_search` over-fetches, filters, and fetches
again (4x deeper) for the queries left with fewer than k results, until k remain or the whole
corpus has been fetched. For exclusion lists the first fetch is k + the longest list, which is
already enough for an exact index; an ANN index may need the second round.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ff_jax.data.ranking_metrics import row_membership  # also scores hits; one membership test


class Searchable(Protocol):
    """What the filters need from an index (see ff_jax.retrieval.index.Index)."""

    @property
    def count(self) -> int: ...

    @property
    def pad_id(self) -> Any: ...

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def per_query_lists(
    lists: Sequence[Collection[Any] | None] | None, queries: int, what: str
) -> list[list[Any]]:
    """One list per query (None -> empty), checked against the number of queries."""
    if lists is None:
        return [[] for _ in range(queries)]
    out = [list(x) if x is not None else [] for x in lists]
    if len(out) != queries:
        raise ValueError(f"{what} has {len(out)} entries for {queries} queries")
    return out


def blocked_author_mask(
    candidates: np.ndarray,
    item_authors: Mapping[Any, Any],
    blocked_authors: Sequence[Collection[Any] | None],
) -> np.ndarray:
    """bool [Q, F]: True where the candidate's author is blocked by query q's member.

    Items missing from `item_authors` have no author and are never blocked.
    """
    candidates = np.asarray(candidates)
    blocked = [set(x) for x in per_query_lists(blocked_authors, candidates.shape[0], "blocked_authors")]
    mask = np.zeros(candidates.shape, dtype=bool)
    for q, row in enumerate(candidates.tolist()):
        if blocked[q]:
            mask[q] = [item_authors.get(c) in blocked[q] for c in row]
    return mask


def compact(
    scores: np.ndarray, ids: np.ndarray, drop: np.ndarray, k: int, pad_id: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the first k undropped (and non-empty) candidates per row, in their original order.

    Returns (scores [Q, k], ids [Q, k], kept [Q]); unfilled slots get -inf and `pad_id`.
    """
    keep = ~drop & (scores > -np.inf)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.minimum(keep.sum(axis=1), k)
    valid = np.arange(order.shape[1])[None, :] < kept[:, None]
    out_scores = np.where(valid, np.take_along_axis(scores, order, axis=1), np.float32(-np.inf))
    out_ids = np.where(valid, np.take_along_axis(ids, order, axis=1), pad_id)
    return out_scores.astype(np.float32), out_ids, kept


def filtered_search(
    index: Searchable,
    queries: Any,
    k: int,
    *,
    seen: Sequence[Collection[Any] | None] | None = None,
    blocked_authors: Sequence[Collection[Any] | None] | None = None,
    item_authors: Mapping[Any, Any] | None = None,
    overfetch: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k that skips `seen[q]` ids and items whose author is in `blocked_authors[q]`.

    (scores [Q, k], ids [Q, k]); slots that cannot be filled (the corpus ran out) hold -inf and
    the index's pad id.
    """
    queries = np.asarray(queries)
    if queries.ndim != 2:
        raise ValueError(f"queries must be a 2-D [queries, dim] array, got shape {queries.shape}")
    n = queries.shape[0]
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > index.count:
        raise ValueError(f"k={k} is larger than the corpus ({index.count} items)")
    seen_lists = per_query_lists(seen, n, "seen")
    if blocked_authors is not None and item_authors is None:
        raise ValueError("blocked_authors needs item_authors (item id -> author id)")
    blocked = per_query_lists(blocked_authors, n, "blocked_authors")

    longest_seen = max((len(x) for x in seen_lists), default=0)
    fetch = k + longest_seen
    if any(blocked):
        fetch = max(fetch, int(np.ceil(k * overfetch)))
    fetch = min(fetch, index.count)

    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids: np.ndarray | None = None
    pending = np.arange(n)
    while pending.size:
        scores, ids = index.search(queries[pending], fetch)
        drop = row_membership(ids, [seen_lists[q] for q in pending])
        if item_authors is not None:
            drop |= blocked_author_mask(ids, item_authors, [blocked[q] for q in pending])
        s, i, kept = compact(scores, ids, drop, k, index.pad_id)
        if out_ids is None:
            out_ids = np.full((n, k), index.pad_id, dtype=i.dtype)
        elif i.dtype.kind == "U" and i.dtype.itemsize > out_ids.dtype.itemsize:
            out_ids = out_ids.astype(i.dtype)
        out_scores[pending], out_ids[pending] = s, i
        if fetch >= index.count:
            break
        pending = pending[kept < k]
        fetch = min(index.count, fetch * 4)
    if out_ids is None:  # no queries
        out_ids = np.full((0, k), index.pad_id)
    return out_scores, out_ids
