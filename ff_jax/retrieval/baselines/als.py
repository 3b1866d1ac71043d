"""Implicit-feedback ALS (Hu, Koren & Volinsky, ICDM 2008) through the `implicit` library (CPU).

`implicit.cpu.als.AlternatingLeastSquares` minimises
    sum_ui c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2)
with p_ui = 1 on engagements, 0 elsewhere, and confidence c_ui = alpha on engagements, 1 elsewhere
(implicit multiplies the input matrix by `alpha`; the paper's c = 1 + alpha' r is implicit's
alpha = 1 + alpha'). alpha = 1 weights every cell alike. Training uses implicit's conjugate-gradient
half-steps (3 CG steps from the previous factors) unless `use_cg=False`.

Members are scored by folding in: `recalculate_user` solves the member half-step above exactly
(Cholesky) on their engaged history against the trained item factors, so it works for any member,
seen in training or not. implicit wants single-threaded BLAS (it parallelises over rows itself);
fit and fold-in run under threadpoolctl's limit of 1 BLAS thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData


class ALS(Recommender):
    """`factors` latent dimensions, L2 `reg`, confidence `alpha` (implicit's), `iterations` sweeps.

    Defaults are the values chosen on MovieLens-100k's validation split (experiments/baselines.py).
    `num_threads=1` keeps runs identical for a seed (implicit's threads split rows, 0 = all cores).
    """

    name = "ALS"

    def __init__(self, factors: int = 64, reg: float = 10.0, alpha: float = 1.0, iterations: int = 50,
                 use_cg: bool = True, seed: int = 0, num_threads: int = 1, progress: bool = False):
        if factors < 1 or reg < 0 or alpha <= 0 or iterations < 1:
            raise ValueError(f"ALS needs factors >= 1, reg >= 0, alpha > 0, iterations >= 1; got "
                             f"factors={factors}, reg={reg}, alpha={alpha}, iterations={iterations}")
        self.factors, self.reg, self.alpha, self.iterations = factors, reg, alpha, iterations
        self.use_cg, self.seed, self.num_threads, self.progress = use_cg, seed, num_threads, progress

    def fit(self, data: TrainingData) -> ALS:
        from implicit.cpu.als import AlternatingLeastSquares

        super().fit(data)
        with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when built and fitted
            self.model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.reg, alpha=self.alpha, iterations=self.iterations,
                use_cg=self.use_cg, calculate_training_loss=False, num_threads=self.num_threads,
                random_state=self.seed)
            self.model.fit(data.engagements.astype(np.float32).tocsr(), show_progress=self.progress)
        self.item_factors = np.asarray(self.model.item_factors)
        self.user_factors = np.asarray(self.model.user_factors)
        return self

    def member_factors(self, members: Sequence[EvalMember]) -> np.ndarray:
        """[members, factors]: the exact member half-step on each member's engaged history."""
        if not members:
            return np.zeros((0, self.factors), np.float32)
        history = self.data.history_matrix(members).astype(np.float32).tocsr()
        with threadpool_limits(1, "blas"):
            return np.asarray(self.model.recalculate_user(np.arange(len(members)), history))

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return (self.member_factors(members) @ self.item_factors.T).astype(np.float32)
