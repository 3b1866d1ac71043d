"""Implicit-feedback ALS (Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback
Datasets", ICDM 2008), solved exactly with batched normal equations in numpy.

Every (member, item) cell is a preference p = 1 if engaged else 0, weighted by a confidence
c = 1 + alpha * r (r = 1 on engagements). Minimising
    sum_ui c_ui (p_ui - x_u . y_i)^2 + reg (|X|^2 + |Y|^2)
alternates closed-form steps; the member step is
    x_u = (Y'Y + alpha * sum_{i in u} y_i y_i' + reg I)^-1 (1 + alpha) sum_{i in u} y_i
(the item step is the same with roles swapped). Y'Y is shared by all members, so each step costs
one small [f, f] solve per row, done in batches.

Members are scored by folding in: the member step above on their engaged history, against the
final item factors — the same step training ends with, and it works for any member.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData


def _row_grams(matrix: sp.csr_matrix, factors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """[rows, f, f]: sum over row r's non-zero columns i of factors[i] factors[i]'."""
    f = factors.shape[1]
    out = np.zeros((matrix.shape[0], f * f), np.float64)
    for start in range(0, matrix.shape[1], chunk):  # column chunks bound the [chunk, f*f] outer block
        block = factors[start : start + chunk]
        outer = np.einsum("if,ig->ifg", block, block).reshape(-1, f * f)
        out += matrix[:, start : start + chunk] @ outer
    return out.reshape(-1, f, f)


def solve_side(matrix: sp.csr_matrix, fixed: np.ndarray, alpha: float, reg: float,
               batch: int = 8192) -> np.ndarray:
    """One ALS half-step: the factors of `matrix`'s rows given the other side's `fixed` factors."""
    f = fixed.shape[1]
    shared = fixed.T @ fixed + reg * np.eye(f)
    out = np.empty((matrix.shape[0], f), np.float64)
    for start in range(0, matrix.shape[0], batch):
        rows = matrix[start : start + batch]
        lhs = shared + alpha * _row_grams(rows, fixed)
        rhs = (1.0 + alpha) * (rows @ fixed)
        out[start : start + batch] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    return out


def weighted_loss(matrix: sp.csr_matrix, users: np.ndarray, items: np.ndarray, alpha: float, reg: float) -> float:
    """The objective above, computed densely (for tests and small data)."""
    prediction = users @ items.T
    preference = matrix.toarray()
    confidence = 1.0 + alpha * preference
    return float((confidence * (preference - prediction) ** 2).sum() + reg * ((users**2).sum() + (items**2).sum()))


class ALS(Recommender):
    """`factors` latent dimensions, L2 `reg`, confidence weight `alpha`, `iterations` full sweeps."""

    name = "ALS"

    def __init__(self, factors: int = 64, reg: float = 10.0, alpha: float = 10.0, iterations: int = 15,
                 seed: int = 0, progress: bool = False):
        if factors < 1 or reg < 0 or alpha < 0 or iterations < 1:
            raise ValueError(f"ALS needs factors >= 1, reg >= 0, alpha >= 0, iterations >= 1; got "
                             f"factors={factors}, reg={reg}, alpha={alpha}, iterations={iterations}")
        self.factors, self.reg, self.alpha, self.iterations = factors, reg, alpha, iterations
        self.seed, self.progress = seed, progress

    def fit(self, data: TrainingData) -> ALS:
        super().fit(data)
        by_user = sp.csr_matrix(data.engagements, dtype=np.float64)
        by_item = by_user.T.tocsr()
        rng = np.random.default_rng(self.seed)
        self.user_factors = rng.normal(0, 0.01, (by_user.shape[0], self.factors))
        self.item_factors = rng.normal(0, 0.01, (by_user.shape[1], self.factors))
        for _ in tqdm(range(self.iterations), desc="ALS sweeps", disable=not self.progress):
            self.user_factors = solve_side(by_user, self.item_factors, self.alpha, self.reg)
            self.item_factors = solve_side(by_item, self.user_factors, self.alpha, self.reg)
        return self

    def member_factors(self, members: Sequence[EvalMember]) -> np.ndarray:
        return solve_side(self.data.history_matrix(members).astype(np.float64), self.item_factors,
                          self.alpha, self.reg)

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return (self.member_factors(members) @ self.item_factors.T).astype(np.float32)
