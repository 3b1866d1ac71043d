"""The cross-encoder ranker in a bundle: its two steps exported like the towers, and run from them
on whole micro-batches of members.

    prefill(weights, tokens [B, P], segment_ids [B, P]) -> (k, v, segment_ids, length)
        the KV caches of B member contexts at once (ff_jax.rank.cross_encoder.prefill), one per
        row, right-padded; B and P symbolic
    score(weights, k, v, segment_ids, length, tokens [R, T], segment_ids [R, T],
          prefix_segments [R, T], positions [R, T], last [R, K]) -> scores [R, K]
        multi-candidate rows (mode (c) of ff_jax.rank.cross_encoder) whose shared prefix is not
        in the row but in the row's cache (read-only): K = PER_ROW candidates of one member per
        row, each its own segment (2, 3, ...) reading the cache's context (segment 1) and itself,
        never the others; R and P symbolic, T = K * C with C the candidate budget (fixed: the
        attention tiles of the row's own tokens are chosen from it)

Members' rows are scored together, `rows` to a call, each row gathering its member's cache
(`ServedRanker.score`), so a micro-batch of members costs one prefill and a few score calls, not
one of each per member. A member's scores are the same as when its candidates extend its own
cache alone (score_with_cache, mode (b)): the other candidates' keys are masked out exactly.

A context is the member prompt cut to the ranker's context budget (BOS, no EOS); a candidate is
the item prompt (no BOS/EOS) cut to the budget left by the question, then the question
(ff_jax.rank.data.RankerData.prompt_tokenizers). `prefill` is dispatched and returns at once,
so the server runs retrieval while the contexts are computed, and `score` waits for them.

The served order is that of the ranker's evaluation: `ranker score + retrieval_weight x retrieval
score` (ff_jax.rank.evaluate's score fusion), the weight kept in the bundle's ranker document. By
default it is the weight the ranker run's last `ff-jax eval` used (`eval/rerank_test.json`, chosen
on validation when asked), else the one it was trained with (`RankerData.retrieval_prior`, 0 for
none: the ranker alone).
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from ff_jax.model import KVCache
from ff_jax.rank.cross_encoder import prefill
from ff_jax.rank.evaluate import load_ranker
from ff_jax.serving.export import export_function, split_weights, weight_specs
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train.run import RANKER, Run, check_kind

STEPS = ("prefill", "score")
PER_ROW = 4  # candidates per score row: more share a row's work, but each attends to the whole row


@dataclasses.dataclass
class RankerExport:
    functions: dict[str, export.Exported]
    weights: dict[str, jax.Array]
    tokenizer: Any
    document: dict  # ranker.json: head, budgets, question ids, model config, origin


def step_functions(graphdef, names: list[str], treedef):
    """The prefill and score steps over a weights dict, as jax.export takes them."""

    def model_of(weights):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, [weights[n] for n in names]))

    def prefill_step(weights, tokens, segment_ids):
        cache = prefill(model_of(weights), tokens, segment_ids)
        return cache.k, cache.v, cache.segment_ids, cache.length

    def score_step(weights, k, v, cache_segments, cache_length, tokens, segment_ids, prefix_segments, positions,
                   last):
        model = model_of(weights)
        cache = KVCache(k=k, v=v, segment_ids=cache_segments, length=cache_length)
        hidden = model.backbone(tokens, positions=positions, segment_ids=segment_ids, prefix_segments=prefix_segments,
                                shared_cache=cache, compute_logits=False).hidden
        return model.score(jnp.take_along_axis(hidden, last[..., None], axis=1))

    return prefill_step, score_step


def served_retrieval_weight(workdir: Path, given: float | None, trained: float = 0.0) -> float:
    """The fusion weight to serve: `given`, else the one the run's last rerank evaluation used, else
    the one it was trained with."""
    if given is not None:
        if not math.isfinite(given):
            raise ValueError(f"the ranker's retrieval weight must be a finite number, got {given}")
        return float(given)
    report = workdir / "eval" / "rerank_test.json"
    return float(json.loads(report.read_text()).get("retrieval_weight", trained)) if report.exists() else trained


def export_ranker(run: Run, platforms, retrieval_weight: float | None = None) -> RankerExport:
    """The ranker run exported for `platforms`; retrieval_weight: the score fusion weight served
    (None: `served_retrieval_weight`'s default)."""
    workdir = run.workdir
    check_kind(workdir, RANKER)
    model, tokenizer, data = load_ranker(run)
    ckpt = Checkpointer(run.layout.checkpoints, CheckpointConfig(async_save=False))
    try:
        step = ckpt.latest_step()
    finally:
        ckpt.close()
    graphdef, names, weights, treedef = split_weights(model)
    prefill_step, score_step = step_functions(graphdef, names, treedef)
    cfg = model.backbone.config
    budget = data.ranker.candidate_budget
    B, P, R = export.symbolic_shape("members, context, rows")
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    cache_shape = (cfg.num_layers, R, P, cfg.num_kv_heads, cfg.head_dim)
    row = int32(R, PER_ROW * budget)
    functions = {
        "prefill": export_function(prefill_step, (weight_specs(weights), int32(B, P), int32(B, P)), platforms,
                                   "the ranker's prefill"),
        "score": export_function(score_step, (weight_specs(weights), jax.ShapeDtypeStruct(cache_shape, cfg.jnp_dtype),
                                              jax.ShapeDtypeStruct(cache_shape, cfg.jnp_dtype), int32(R, P), int32(),
                                              row, row, row, row, int32(R, PER_ROW)),
                                 platforms, "the ranker's score step"),
    }
    question = tokenizer.encode(data.ranker.question)
    document = {"head": data.ranker.head, "candidate_budget": budget, "context_budget": data.context_budget,
                "per_row": PER_ROW,
                "question": list(question), "item_tokens": budget - len(question), "add_bos": data.feed.batch.add_bos,
                "backbone": dataclasses.asdict(cfg), "origin": {"workdir": str(workdir.absolute()), "step": step},
                "retrieval_weight": served_retrieval_weight(workdir, retrieval_weight, data.retrieval_prior)}
    return RankerExport(functions, weights, tokenizer, document)


@dataclasses.dataclass
class Pending:
    """Prefilled contexts (dispatched, maybe still computing): the cache arrays and each member's
    context length."""

    cache: tuple  # (k, v, segment_ids, length) of the prefill, one row per member (then filler)
    lengths: list[int]


class ServedRanker:
    """A bundle's ranker: `start(contexts)` dispatches one prefill for a batch of members,
    `score(pending, candidates)` waits for it and scores every member's candidates in rows of
    `per_row`, `rows` rows per call (padded: one compiled shape per context width)."""

    def __init__(self, functions: dict[str, export.Exported], weights: dict[str, jax.Array], document: dict,
                 batch: int):
        self.steps = {name: jax.jit(functions[name].call) for name in STEPS}
        self.weights, self.document = weights, document
        self.budget, self.per_row = document["candidate_budget"], document["per_row"]
        self.rows = -(-batch // self.per_row)  # `batch` candidates a call, as rows of per_row
        # Each row reads its member's cache: gathered on the device, a small program per shape.
        self.gather = jax.jit(lambda k, v, segments, members: (k[:, members], v[:, members], segments[members]))

    def start(self, contexts: Sequence[Sequence[int]], batch: int, width: int) -> Pending:
        """The caches of `contexts` (as rows 0.. of `batch`; the rest filler), dispatched, not
        waited for; `width` >= every context's length."""
        tokens = np.zeros((batch, width), np.int32)
        segments = np.zeros_like(tokens)
        for row, context in enumerate(contexts):
            tokens[row, : len(context)], segments[row, : len(context)] = context, 1
        return Pending(self.steps["prefill"](self.weights, tokens, segments), [len(c) for c in contexts])

    def score(self, pending: Pending, candidates: Sequence[Sequence[Sequence[int]]]) -> list[np.ndarray]:
        """float32 [len(candidates[m])] per member m; each candidate's token ids hold the question."""
        k, v, cache_segments, cache_length = pending.cache
        rows = [(m, first) for m, own in enumerate(candidates) for first in range(0, len(own), self.per_row)]
        out = [np.zeros(len(own), np.float32) for own in candidates]
        width = self.per_row * self.budget
        for start in range(0, len(rows), self.rows):
            chunk = rows[start:start + self.rows]
            tokens, segments, prefixes, positions = (np.zeros((self.rows, width), np.int32) for _ in range(4))
            last = np.zeros((self.rows, self.per_row), np.int32)
            members = np.zeros(self.rows, np.int32)  # filler rows read member 0 and are dropped
            for r, (m, first) in enumerate(chunk):
                members[r] = m
                for j, ids in enumerate(candidates[m][first:first + self.per_row]):
                    lo, n = j * self.budget, len(ids)
                    tokens[r, lo:lo + n], segments[r, lo:lo + n], prefixes[r, lo:lo + n] = ids, j + 2, 1
                    positions[r, lo:lo + n] = pending.lengths[m] + np.arange(n)
                    last[r, j] = lo + n - 1
            gathered = self.gather(k, v, cache_segments, members)
            scores = np.asarray(self.steps["score"](self.weights, *gathered, cache_length, tokens, segments, prefixes,
                                                    positions, last))
            for r, (m, first) in enumerate(chunk):
                n = len(candidates[m][first:first + self.per_row])
                out[m][first:first + n] = scores[r, :n]
        return out
