"""The cross-encoder ranker in a bundle: its two steps exported like the towers, and run from them.

    prefill(weights, tokens [1, P], segment_ids [1, P]) -> (k, v, segment_ids, length)
        the member context's KV cache (ff_jax.rank.cross_encoder.prefill); P symbolic
    score(weights, k, v, segment_ids, length, context_length, tokens [N, C], segment_ids [N, C], last [N])
        -> scores [N]: candidates extending that cache, read-only (score_with_cache); N and P
        symbolic, C the candidate budget (fixed: the attention tiles of the candidates' own
        tokens are chosen from it)

A context is the member prompt cut to the ranker's context budget (BOS, no EOS); a candidate is
the item prompt (no BOS/EOS) cut to the budget left by the question, then the question
(ff_jax.rank.data.RankerData.prompt_tokenizers). `prefill` is dispatched and returns at once,
so the server runs retrieval while the context is computed, and `score` waits for it.
"""

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export

from ff_jax.model import KVCache
from ff_jax.rank.checkpoints import RANKER, check_kind
from ff_jax.rank.cross_encoder import prefill, score_with_cache
from ff_jax.rank.evaluate import load_ranker
from ff_jax.serving.export import export_function, split_weights, weight_specs
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer

STEPS = ("prefill", "score")


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

    def score_step(weights, k, v, cache_segments, cache_length, context_length, tokens, segment_ids, last):
        cache = KVCache(k=k, v=v, segment_ids=cache_segments, length=cache_length)
        return score_with_cache(model_of(weights), cache, context_length, tokens, segment_ids, last)

    return prefill_step, score_step


def export_ranker(workdir: str | Path, platforms) -> RankerExport:
    """The ranker run `workdir` (its config.gin parsed by the caller) exported for `platforms`."""
    workdir = Path(workdir)
    check_kind(workdir, RANKER)
    model, tokenizer, data = load_ranker(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig(async_save=False))
    try:
        step = ckpt.latest_step()
    finally:
        ckpt.close()
    graphdef, names, weights, treedef = split_weights(model)
    prefill_step, score_step = step_functions(graphdef, names, treedef)
    cfg = model.backbone.config
    budget = data.ranker.candidate_budget
    P, N = export.symbolic_shape("context, candidates")
    int32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    cache_shape = (cfg.num_layers, 1, P, cfg.num_kv_heads, cfg.head_dim)
    functions = {
        "prefill": export_function(prefill_step, (weight_specs(weights), int32(1, P), int32(1, P)), platforms,
                                   "the ranker's prefill"),
        "score": export_function(score_step, (weight_specs(weights), jax.ShapeDtypeStruct(cache_shape, cfg.jnp_dtype),
                                              jax.ShapeDtypeStruct(cache_shape, cfg.jnp_dtype), int32(1, P), int32(),
                                              int32(), int32(N, budget), int32(N, budget), int32(N)),
                                 platforms, "the ranker's score step"),
    }
    question = tokenizer.encode(data.ranker.question)
    document = {"head": data.ranker.head, "candidate_budget": budget, "context_budget": data.context_budget,
                "question": list(question), "item_tokens": budget - len(question), "add_bos": data.feed.batch.add_bos,
                "backbone": dataclasses.asdict(cfg), "origin": {"workdir": str(workdir.absolute()), "step": step}}
    return RankerExport(functions, weights, tokenizer, document)


class ServedRanker:
    """A bundle's ranker: `start(context)` dispatches the prefill, `score(pending, candidates)` waits
    for it and scores the candidates in chunks of `batch` (padded: one compiled shape)."""

    def __init__(self, functions: dict[str, export.Exported], weights: dict[str, jax.Array], document: dict,
                 batch: int):
        self.steps = {name: jax.jit(functions[name].call) for name in STEPS}
        self.weights, self.document, self.batch = weights, document, batch
        self.budget = document["candidate_budget"]

    def start(self, context: Sequence[int], width: int) -> tuple:
        """The context's cache, dispatched (not waited for); `width` >= len(context) slots."""
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(context)] = context
        segments = (np.arange(width) < len(context)).astype(np.int32)[None]
        return self.steps["prefill"](self.weights, tokens, segments), len(context)

    def score(self, pending: tuple, candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [len(candidates)]; each candidate's token ids hold the question already."""
        cache, context_length = pending
        out = []
        for start in range(0, len(candidates), self.batch):
            chunk = list(candidates[start:start + self.batch])
            tokens = np.zeros((self.batch, self.budget), np.int32)
            segments = np.zeros_like(tokens)
            last = np.zeros(self.batch, np.int32)
            for row, ids in enumerate(chunk):
                tokens[row, : len(ids)], segments[row, : len(ids)], last[row] = ids, 1, len(ids) - 1
            scores = self.steps["score"](self.weights, *cache, np.int32(context_length), tokens, segments, last)
            out.append(np.asarray(scores)[: len(chunk)])
        return np.concatenate(out) if out else np.zeros(0, np.float32)
