"""BPR: Bayesian Personalized Ranking (Rendle et al., UAI 2009) with matrix factorisation, through the
`implicit` library (CPU, `implicit.cpu.bpr.BayesianPersonalizedRanking`).

For sampled triples (member u, engaged item i, item j the member did not engage with; implicit
redraws j when u engaged with it) implicit runs SGD on
    -log sigmoid(s_ui - s_uj) + reg (|p_u|^2 + |q_i|^2 + |q_j|^2),   s_ui = p_u . q_i + b_i
for `iterations` epochs of one triple per engagement. The item bias b_i is implicit's extra factor
column (the member's is fixed at 1), so both factor tables are `factors + 1` wide.

BPR has no fold-in: members are scored with their trained factors, looked up by user id; a member
unseen in training ranks items by their bias alone. `num_threads=1` (the default) makes the SGD
order, and so the result, fixed for a seed; more threads update factors without locks (hogwild).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData


class BPR(Recommender):
    """`factors` latent dimensions (+ an item bias), SGD `learning_rate`, L2 `reg`, `iterations` epochs.

    Defaults are the values chosen on MovieLens-100k's validation split (experiments/baselines.py).
    """

    name = "BPR"

    def __init__(self, factors: int = 64, reg: float = 0.001, learning_rate: float = 0.01, iterations: int = 100,
                 seed: int = 0, num_threads: int = 1, progress: bool = False):
        if factors < 1 or iterations < 1 or reg < 0 or learning_rate <= 0:
            raise ValueError(f"BPR needs factors, iterations >= 1, reg >= 0 and learning_rate > 0; got "
                             f"factors={factors}, iterations={iterations}, reg={reg}, learning_rate={learning_rate}")
        self.factors, self.reg, self.learning_rate, self.iterations = factors, reg, learning_rate, iterations
        self.seed, self.num_threads, self.progress = seed, num_threads, progress

    def fit(self, data: TrainingData) -> BPR:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        super().fit(data)
        if data.engagements.nnz == 0:
            raise ValueError("BPR needs at least one engagement in the training data")
        with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when built and fitted
            self.model = BayesianPersonalizedRanking(
                factors=self.factors, learning_rate=self.learning_rate, regularization=self.reg,
                iterations=self.iterations, num_threads=self.num_threads, verify_negative_samples=True,
                random_state=self.seed)
            self.model.fit(data.engagements.astype(np.float32).tocsr(), show_progress=self.progress)
        self.user_factors = np.asarray(self.model.user_factors)  # [users, factors + 1], last column 1
        self.item_factors = np.asarray(self.model.item_factors)  # [items, factors + 1], last column bias
        return self

    def member_factors(self, members: Sequence[EvalMember]) -> np.ndarray:
        """[members, factors + 1]: trained rows; an unseen member gets only the bias column."""
        unseen = np.zeros(self.item_factors.shape[1], np.float32)
        unseen[-1] = 1.0
        rows = [self.data.user_row(m.user_id) for m in members]
        return np.stack([self.user_factors[r] if r is not None else unseen for r in rows]) if rows \
            else np.zeros((0, self.item_factors.shape[1]), np.float32)

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return (self.member_factors(members) @ self.item_factors.T).astype(np.float32)
