"""Item-kNN: an item scores by its cosine similarity to the items in a member's history.

Similarity is the cosine between two items' columns of the binary member x item engagement matrix
(co-engagement count over the geometric mean of their counts). Each item keeps only its
`neighbors` most similar items (None keeps all), and a member's score for item i sums
sim(j, i) over the history items j whose neighbourhood holds i.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.metrics import places_in_rows
from ff_jax.retrieval.recommender import Recommender, TrainingData


def cosine_neighbors(engagements: sp.csr_matrix, neighbors: int | None, chunk: int = 2048,
                     progress: bool = False) -> sp.csr_matrix:
    """Sparse [items, items]: row j holds j's `neighbors` highest cosine similarities (self excluded;
    ties at the last place go to the lower item).

    Blocks of rows stay sparse: only co-engaged pairs are ever stored. (A dense [chunk, items] block
    took 8 GB a block at a million items, and `ff-jax eval` died of it.)"""
    by_item = sp.csc_matrix(engagements, dtype=np.float32).T.tocsr()  # [items, users]
    n = by_item.shape[0]
    norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())
    inverse = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    keep = n - 1 if neighbors is None else min(neighbors, n - 1)
    rows, cols, vals = [], [], []
    for start in tqdm(range(0, n, chunk), desc="item-kNN similarities", disable=not progress):
        block = (by_item[start:start + chunk] @ by_item.T).tocoo()  # co-engagement counts, sparse
        r, c = block.row.astype(np.int64) + start, block.col.astype(np.int64)
        v = block.data.astype(np.float32) * (inverse[r] * inverse[c])
        useful = (r != c) & (v > 0)
        r, c, v = r[useful], c[useful], v[useful]
        if keep < n - 1:  # each row's `keep` best: by row, best first, lower item first on ties
            order = np.lexsort((c, -v, r))
            r, c, v = r[order], c[order], v[order]
            top = places_in_rows(r) < keep
            r, c, v = r[top], c[top], v[top]
        rows.append(r)
        cols.append(c)
        vals.append(v)
    data = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    return sp.csr_matrix((data, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


class ItemKNN(Recommender):
    name = "item-kNN"

    def __init__(self, neighbors: int | None = None):
        if neighbors is not None and neighbors < 1:
            raise ValueError(f"neighbors must be >= 1 or None, got {neighbors}")
        self.neighbors = neighbors

    def fit(self, data: TrainingData) -> ItemKNN:
        super().fit(data)
        self.similarity = cosine_neighbors(data.engagements, self.neighbors)
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        history = self.data.history_matrix(members)
        return np.asarray((history @ self.similarity).toarray(), np.float32)
