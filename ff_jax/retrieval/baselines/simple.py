"""The floor every model must clear: random scores, and items ranked by how many members engaged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData


class RandomScores(Recommender):
    """Independent uniform scores per (member, item), seeded: recall@K ≈ K / corpus size."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, data: TrainingData) -> RandomScores:
        self._rng = np.random.default_rng(self.seed)
        return super().fit(data)

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return self._rng.random((len(members), self.data.num_items), dtype=np.float32)


class Popularity(Recommender):
    """Every member gets the same list: items by the number of members who engaged in training."""

    name = "popularity"

    def fit(self, data: TrainingData) -> Popularity:
        super().fit(data)
        self.counts = data.popularity().astype(np.float32)
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(members), self.counts.size))
