"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018), in JAX + optax.

A member is the sequence of their items, oldest first. Each item's embedding M_i plus a learned
position embedding goes through `blocks` pre-LayerNorm Transformer blocks (causal self-attention
with `heads` heads, then a ReLU feed-forward of width `dim`; residuals, dropout), then a final
LayerNorm. The output at position t scores every item j as h_t . M_j (the input item table, shared),
and training minimises the full-softmax cross-entropy of the next item at every position:
    loss = mean over positions t with a target of  -log softmax(h_t . M)[s_{t+1}].
Sequences are left-padded to `max_len` (padding is masked from the attention keys and the loss);
a member longer than that is cut into windows of `max_len` from the newest end, so every training
interaction is a target once. A member is scored from the output at their newest history item.

`input` picks what the sequence holds: "positives" (engaged items only, as the paper) or "all"
(every interaction, with a learned vector added to the not-engaged ones; targets are still the
engaged items only: a position whose next interaction was not engaged has no loss). Training
reads `TrainingData.events` (the period's interactions in time order); scoring reads each
member's `history` / `history_engaged`. An item nobody engaged with is never a target, so the
softmax only pushes it down: its probability ends at or below chance, 1 / items.

Why our own file: RecBole 1.2.1's SASRec (installed as a data asset) does not import with this
stack. Measured on the venv (torch 2.13, numpy 2.4): `recbole.model.sequential_recommender.sasrec`
needs colorlog, colorama, texttable, tabulate, thop, plotly and tensorboard, none of them in the
stack, and RecBole's evaluator still uses `np.float`, removed in numpy 1.24; its models also train
only through RecBole's own Dataset / Trainer. This file is the model in the framework's JAX.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData

INPUTS = ("positives", "all")


def init_params(key, num_items: int, dim: int, blocks: int, max_len: int) -> dict:
    """Item table [num_items + 1, dim] (row 0 = padding), positions, the not-engaged vector, blocks."""
    import jax
    import jax.numpy as jnp

    keys = iter(jax.random.split(key, 3 + 6 * blocks))
    normal = lambda shape: 0.02 * jax.random.truncated_normal(next(keys), -2.0, 2.0, shape, jnp.float32)
    ln = lambda: {"scale": jnp.ones(dim), "bias": jnp.zeros(dim)}
    params = {"item": normal((num_items + 1, dim)).at[0].set(0.0), "pos": normal((max_len, dim)),
              "skip": normal((dim,)), "final_ln": ln(), "blocks": []}
    for _ in range(blocks):
        params["blocks"].append({
            "ln1": ln(), "q": normal((dim, dim)), "k": normal((dim, dim)), "v": normal((dim, dim)),
            "o": normal((dim, dim)), "ln2": ln(), "w1": normal((dim, dim)), "b1": jnp.zeros(dim),
            "w2": normal((dim, dim)), "b2": jnp.zeros(dim)})
    return params


def layer_norm(x, p, eps: float = 1e-6):
    import jax.numpy as jnp

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def encode(params: dict, items, engaged, heads: int = 1, dropout: float = 0.0, key=None):
    """Hidden states [B, L, dim] of left-padded sequences `items` [B, L] (0 = padding, item j is
    corpus position j - 1); `engaged` [B, L] bool. Dropout applies when `key` is given."""
    import jax
    import jax.numpy as jnp

    batch, length = items.shape
    dim = params["item"].shape[1]
    keys = iter(jax.random.split(key, 1 + 2 * len(params["blocks"]))) if key is not None else None

    def drop(x):
        if keys is None or dropout == 0.0:
            return x
        return jnp.where(jax.random.bernoulli(next(keys), 1.0 - dropout, x.shape), x / (1.0 - dropout), 0.0)

    valid = (items > 0)[..., None]
    x = params["item"][items] + params["pos"][-length:] + jnp.where(engaged, 0.0, 1.0)[..., None] * params["skip"]
    x = drop(x) * valid
    allowed = jnp.tril(jnp.ones((length, length), bool))[None, None] & (items > 0)[:, None, None, :]
    split = lambda t: t.reshape(batch, length, heads, dim // heads).transpose(0, 2, 1, 3)
    for p in params["blocks"]:
        h = layer_norm(x, p["ln1"])
        q, k, v = split(h @ p["q"]), split(h @ p["k"]), split(h @ p["v"])
        logits = jnp.where(allowed, q @ k.transpose(0, 1, 3, 2) / math.sqrt(dim // heads), -1e9)
        attended = (jax.nn.softmax(logits, -1) @ v).transpose(0, 2, 1, 3).reshape(batch, length, dim)
        x = x + drop(attended @ p["o"])
        h = layer_norm(x, p["ln2"])
        x = (x + drop(jax.nn.relu(h @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])) * valid
    return layer_norm(x, params["final_ln"])


def next_item_loss(params: dict, items, engaged, targets, heads: int = 1, dropout: float = 0.0, key=None):
    """Mean full-softmax cross-entropy of `targets` [B, L] (item j + 1; 0 = no loss there):
    logsumexp_j(h_t . M_j) - h_t . M_target, averaged over the positions with a target."""
    import jax
    import jax.numpy as jnp

    hidden = encode(params, items, engaged, heads, dropout, key)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    table = params["item"]
    log_z = jax.nn.logsumexp(hidden @ table[1:].T, -1)                      # over every item
    nll = log_z - (hidden * table[targets]).sum(-1)
    mask = targets > 0
    return jnp.where(mask, nll, 0.0).sum() / jnp.maximum(mask.sum(), 1)


@functools.lru_cache(maxsize=None)
def train_step(heads: int, dropout: float):
    """The jitted Adam step (one per setting, shared by fits: compiled once per batch shape)."""
    import jax
    import optax

    adam = optax.scale_by_adam()

    @jax.jit
    def step(params, state, batch, key, learning_rate):
        loss, grads = jax.value_and_grad(next_item_loss)(params, *batch, heads, dropout, key)
        grads["item"] = grads["item"].at[0].set(0.0)  # the padding row stays zero
        updates, state = adam.update(grads, state, params)
        updates = jax.tree_util.tree_map(lambda u: -learning_rate * u, updates)
        return optax.apply_updates(params, updates), state, loss

    return adam.init, step


@functools.lru_cache(maxsize=None)
def last_output(heads: int):
    import jax

    return jax.jit(lambda params, items, engaged: encode(params, items, engaged, heads)[:, -1])


def windows(items: np.ndarray, engaged: np.ndarray, targets: np.ndarray, max_len: int) -> tuple[np.ndarray, ...]:
    """One sequence (input items + 1, engaged, next-item targets) as left-padded windows of
    `max_len`, newest window first."""
    rows = []
    for stop in range(len(items), 0, -max_len):
        start = max(0, stop - max_len)
        pad = max_len - (stop - start)
        rows.append([np.pad(a[start:stop], (pad, 0)) for a in (items, engaged, targets)])
    return tuple(np.stack(column) for column in zip(*rows)) if rows else ()


class SASRec(Recommender):
    """`blocks` Transformer blocks of width `dim`, Adam at `learning_rate` for `epochs` epochs.

    Defaults are the values chosen on MovieLens-100k's validation split (experiments/baselines.py).
    """

    name = "SASRec"

    def __init__(self, dim: int = 64, blocks: int = 2, heads: int = 1, max_len: int = 50, dropout: float = 0.2,
                 learning_rate: float = 1e-3, epochs: int = 50, batch_size: int = 128, input: str = "positives",
                 seed: int = 0):
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        if min(dim, blocks, heads, max_len, epochs, batch_size) < 1 or dim % heads or not 0 <= dropout < 1 \
                or learning_rate <= 0:
            raise ValueError(f"SASRec needs dim, blocks, heads, max_len, epochs, batch_size >= 1, heads dividing "
                             f"dim, 0 <= dropout < 1, learning_rate > 0; got dim={dim}, blocks={blocks}, "
                             f"heads={heads}, max_len={max_len}, epochs={epochs}, batch_size={batch_size}, "
                             f"dropout={dropout}, learning_rate={learning_rate}")
        self.dim, self.blocks, self.heads, self.max_len, self.dropout = dim, blocks, heads, max_len, dropout
        self.learning_rate, self.epochs, self.batch_size, self.input, self.seed = \
            learning_rate, epochs, batch_size, input, seed

    def training_windows(self, events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items + 1, engaged, targets) [windows, max_len] of every user's events (see the module)."""
        if self.input == "positives":
            events = events[events["engaged"].to_numpy(bool)]
        order = np.argsort(events["user"].to_numpy(), kind="stable")  # time order kept within a user
        users = events["user"].to_numpy()[order]
        items = events["item"].to_numpy()[order].astype(np.int32) + 1
        engaged = events["engaged"].to_numpy(bool)[order]
        out = []
        for chunk in np.split(np.arange(len(users)), np.flatnonzero(np.diff(users)) + 1):
            if len(chunk) < 2:
                continue
            i, e = items[chunk], engaged[chunk]
            out.append(windows(i[:-1], e[:-1], np.where(e[1:], i[1:], 0), self.max_len))
        out = [w for w in out if w and (w[2] > 0).any()]
        if not out:
            raise ValueError("SASRec needs at least one member with two engagements in order (TrainingData.events)")
        return tuple(np.concatenate(column) for column in zip(*out))

    def fit(self, data: TrainingData) -> SASRec:
        import jax

        super().fit(data)
        if data.events is None:
            raise ValueError("SASRec needs the training interactions in time order: TrainingData.events is None "
                             "(training_data fills it; ff_jax.retrieval.recommender.member_events rebuilds it)")
        windows_ = self.training_windows(data.events)
        key = jax.random.PRNGKey(self.seed)
        key, init = jax.random.split(key)
        params = init_params(init, data.num_items, self.dim, self.blocks, self.max_len)
        init_state, step = train_step(self.heads, self.dropout)
        state = init_state(params)
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            for batch in self.batches(windows_, rng):
                key, sub = jax.random.split(key)
                params, state, loss = step(params, state, batch, sub, self.learning_rate)
        self.params = jax.device_get(params)
        self.last_loss = float(loss)
        return self

    def batches(self, windows_: tuple[np.ndarray, ...], rng: np.random.Generator):
        """One epoch in shuffled batches. Windows are grouped by length into buckets of 8, 16, 32 ...
        max_len positions (padding left out, which changes no output: it is masked and positions are
        right-aligned); a bucket of length l takes batch_size * max_len / l windows a batch, so every
        step sees about as many positions; the last batch of a bucket is topped up with empty windows."""
        lengths = (windows_[0] > 0).sum(1)
        sizes = sorted({min(8 << i, self.max_len) for i in range(max(1, math.ceil(math.log2(self.max_len / 8)) + 1))})
        bucket = np.searchsorted(sizes, lengths)
        out = []
        for b, length in enumerate(sizes):
            rows = rng.permutation(np.flatnonzero(bucket == b))
            per = max(1, self.batch_size * self.max_len // length)
            for start in range(0, len(rows), per):
                take = np.pad(rows[start:start + per], (0, max(0, per - len(rows[start:start + per]))),
                              constant_values=-1)
                out.append(tuple(np.where((take >= 0)[:, None], a[np.maximum(take, 0), -length:], 0).astype(a.dtype)
                                 for a in windows_))
        for i in rng.permutation(len(out)):
            yield out[i]

    def member_sequences(self, members: Sequence[EvalMember]) -> tuple[np.ndarray, np.ndarray]:
        """(items + 1, engaged) [members, max_len]: each member's newest `max_len` inputs, left-padded."""
        corpus = pd.Index(self.data.corpus_ids)
        items = np.zeros((len(members), self.max_len), np.int32)
        engaged = np.ones((len(members), self.max_len), bool)
        for row, m in enumerate(members):
            codes = corpus.get_indexer(list(m.history))
            keep = (codes >= 0) & (np.asarray(m.history_engaged, bool) if self.input == "positives" else True)
            codes, flags = codes[keep][-self.max_len:], np.asarray(m.history_engaged, bool)[keep][-self.max_len:]
            if len(codes):
                items[row, -len(codes):], engaged[row, -len(codes):] = codes + 1, flags
        return items, engaged

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        if not members:
            return np.zeros((0, self.data.num_items), np.float32)
        items, engaged = self.member_sequences(members)
        hidden = np.asarray(last_output(self.heads)(self.params, items, engaged))
        return (hidden @ self.params["item"][1:].T).astype(np.float32)
