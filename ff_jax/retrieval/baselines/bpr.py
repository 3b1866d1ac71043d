"""BPR: Bayesian Personalized Ranking (Rendle et al., UAI 2009) with matrix factorisation, in JAX.

For sampled triples (member u, engaged item i, item j the member did not engage with) it minimises
    -log sigmoid(s_ui - s_uj) + reg (|p_u|^2 + |q_i|^2 + |q_j|^2),   s_ui = p_u . q_i + b_i
with Adam on minibatches. One epoch = as many triples as there are engagements; an epoch's
triples are drawn on the host and run through one jitted `lax.scan`.

Members are scored with their trained factors, looked up by user id; a member unseen in training
gets zero factors (items then rank by their bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData


def bpr_loss(params: dict, users: jax.Array, positives: jax.Array, negatives: jax.Array, reg: float) -> jax.Array:
    p, q, bias = params["users"][users], params["items"], params["bias"]
    qi, qj = q[positives], q[negatives]
    margin = jnp.sum(p * (qi - qj), axis=-1) + bias[positives] - bias[negatives]
    penalty = reg * (jnp.sum(p**2) + jnp.sum(qi**2) + jnp.sum(qj**2)) / users.shape[0]
    return -jnp.mean(jax.nn.log_sigmoid(margin)) + penalty


def sample_negatives(users: np.ndarray, engaged_keys: np.ndarray, num_items: int, rng: np.random.Generator,
                     tries: int = 5) -> np.ndarray:
    """Uniform items per user, redrawn (up to `tries` times) where the user engaged with them.
    `engaged_keys` is sorted user * num_items + item of every engagement."""
    items = rng.integers(0, num_items, users.size)
    for _ in range(tries):
        clash = np.isin(users.astype(np.int64) * num_items + items, engaged_keys, assume_unique=False)
        if not clash.any():
            break
        items[clash] = rng.integers(0, num_items, int(clash.sum()))
    return items


class BPR(Recommender):
    name = "BPR"

    def __init__(self, factors: int = 64, reg: float = 1e-4, learning_rate: float = 0.01, epochs: int = 60,
                 batch_size: int = 1024, seed: int = 0, progress: bool = False):
        if factors < 1 or epochs < 1 or batch_size < 1 or reg < 0:
            raise ValueError(f"BPR needs factors, epochs, batch_size >= 1 and reg >= 0; got factors={factors}, "
                             f"epochs={epochs}, batch_size={batch_size}, reg={reg}")
        self.factors, self.reg, self.learning_rate, self.epochs = factors, reg, learning_rate, epochs
        self.batch_size, self.seed, self.progress = batch_size, seed, progress

    def fit(self, data: TrainingData) -> BPR:
        super().fit(data)
        coo = data.engagements.tocoo()
        if coo.nnz == 0:
            raise ValueError("BPR needs at least one engagement in the training data")
        n_users, n_items = data.engagements.shape
        keys = np.sort(coo.row.astype(np.int64) * n_items + coo.col)
        rng = np.random.default_rng(self.seed)
        init = jax.random.split(jax.random.key(self.seed), 2)
        params = {"users": 0.1 * jax.random.normal(init[0], (n_users, self.factors)),
                  "items": 0.1 * jax.random.normal(init[1], (n_items, self.factors)),
                  "bias": jnp.zeros((n_items,))}
        tx = optax.adam(self.learning_rate)
        opt_state = tx.init(params)
        reg = self.reg

        @jax.jit
        def epoch(params, opt_state, users, positives, negatives):
            def step(carry, batch):
                params, opt_state = carry
                loss, grads = jax.value_and_grad(bpr_loss)(params, *batch, reg)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), loss
            (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (users, positives, negatives))
            return params, opt_state, losses.mean()

        steps = max(1, coo.nnz // self.batch_size)
        self.losses = []
        for _ in tqdm(range(self.epochs), desc="BPR epochs", disable=not self.progress):
            pick = rng.integers(0, coo.nnz, (steps, self.batch_size))
            users, positives = coo.row[pick], coo.col[pick]
            negatives = sample_negatives(users.ravel(), keys, n_items, rng).reshape(users.shape)
            params, opt_state, loss = epoch(params, opt_state, users, positives, negatives)
            self.losses.append(float(loss))
        self.user_factors = np.asarray(params["users"])
        self.item_factors = np.asarray(params["items"])
        self.item_bias = np.asarray(params["bias"])
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        rows = [self.data.user_row(m.user_id) for m in members]
        factors = np.stack([self.user_factors[r] if r is not None else np.zeros(self.factors, np.float32)
                            for r in rows]) if rows else np.zeros((0, self.factors), np.float32)
        return (factors @ self.item_factors.T + self.item_bias).astype(np.float32)
