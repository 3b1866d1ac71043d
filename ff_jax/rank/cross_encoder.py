"""The cross-encoder ranker: one LLaMA reads "member context, candidate item prompt, question" and
the hidden state of the sequence's last token becomes a score.

The head is chosen in gin (RankerConfig.head): "linear", a learned map of that hidden state to
one number, or "yes_no", the LM head's logit of the answer token " yes" minus that of " no",
which a pretrained model can use zero-shot.

Three jitted paths give the same scores (ff_jax.rank.layout builds their inputs):
  (a) `score_naive`: every candidate after its own copy of the context;
  (b) `prefill` the context once into a KVCache of batch 1, then `score_with_cache`: all
      candidates extend it as a read-only shared cache, never copied per candidate;
  (c) `score_rows`: multi-candidate rows under the shared-prefix mask.
`score_candidates` is the host entry over any of them: it lays out, pads to a few fixed shapes
(so repeated calls do not recompile) and returns one score per candidate.
"""

import dataclasses
from typing import Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ff_jax.model import KVCache, Llama
from ff_jax.rank import layout
from ff_jax.train.dual_encoder import HeadParam

HEADS = ("linear", "yes_no")
MODES = ("naive", "cache", "rows")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RankerConfig:
    """head: "linear" or "yes_no". question: appended to every candidate's item prompt (the
    yes/no head reads its answer after it). candidate_budget: tokens per candidate, question
    and end token included."""

    head: str = "linear"
    question: str = "\nIs this post relevant to the member? Answer:"
    yes_token: str = " yes"
    no_token: str = " no"
    candidate_budget: int = 64

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"RankerConfig.head must be one of {HEADS}, got {self.head!r}")
        if self.candidate_budget < 2:
            raise ValueError(f"RankerConfig.candidate_budget must be >= 2, got {self.candidate_budget}")

    def answer_ids(self, tokenizer) -> Optional[tuple[int, int]]:
        """(yes id, no id) for the yes_no head; each word must be one token of the vocabulary."""
        if self.head != "yes_no":
            return None
        ids = []
        for field, word in (("yes_token", self.yes_token), ("no_token", self.no_token)):
            encoded = tokenizer.encode(word)
            if len(encoded) != 1:
                raise ValueError(f"RankerConfig.{field}={word!r} is {len(encoded)} tokens in this vocabulary; "
                                 "the yes_no head needs one token each")
            ids.append(encoded[0])
        return ids[0], ids[1]


class CrossEncoder(nnx.Module):
    def __init__(self, backbone: Llama, head: str = "linear", answer_ids: Optional[tuple[int, int]] = None, *,
                 rngs: nnx.Rngs):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if head == "yes_no" and answer_ids is None:
            raise ValueError("the yes_no head needs answer_ids (RankerConfig.answer_ids(tokenizer))")
        self.backbone = backbone
        self.head_kind = head
        self.answer_ids = tuple(answer_ids) if answer_ids is not None else None
        if head == "linear":
            d = backbone.config.hidden_size
            self.kernel = HeadParam(jax.random.normal(rngs.params(), (d,)) / jnp.sqrt(d), logical_axes=("embed",))
            self.bias = HeadParam(jnp.zeros((), jnp.float32))

    def score(self, hidden: jax.Array) -> jax.Array:
        """hidden [A, B, D] (after the final norm) → float32 scores [A, B]."""
        if self.head_kind == "linear":
            return hidden.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32) + self.bias[...]
        logits = self.backbone.logits(hidden)
        yes, no = self.answer_ids
        return logits[..., yes] - logits[..., no]

    def hidden(self, tokens, segment_ids, positions, prefix_segments=None) -> jax.Array:
        return self.backbone(tokens, positions=positions, segment_ids=segment_ids, prefix_segments=prefix_segments,
                             compute_logits=False).hidden

    def row_scores(self, tokens, segment_ids, positions, prefix_segments, last) -> jax.Array:
        """Multi-candidate rows [R, L] → scores [R, K] at the slots `last` [R, K] (-1: none; its
        score is meaningless and callers mask it)."""
        hidden = self.hidden(tokens, segment_ids, positions, prefix_segments)
        picked = jnp.take_along_axis(hidden, jnp.maximum(last, 0)[..., None], axis=1)
        return self.score(picked)


@nnx.jit
def score_naive(model: CrossEncoder, tokens, segment_ids, positions, last):
    """(a) rows [N, L] each holding the context then one candidate → scores [N, 1]."""
    return model.row_scores(tokens, segment_ids, positions, None, last)


@nnx.jit
def prefill(model: CrossEncoder, tokens, segment_ids) -> KVCache:
    """(b) the context [1, P] (right-padded: segment 0) → its KVCache of P slots."""
    cache = KVCache.empty(model.backbone.config, batch=tokens.shape[0], slots=tokens.shape[1])
    return model.backbone(tokens, segment_ids=segment_ids, cache=cache, compute_logits=False).cache


@nnx.jit
def score_with_cache(model: CrossEncoder, cache: KVCache, context_length, tokens, segment_ids, last):
    """(b) candidates [N, C] extending the context's cache (read only, shared by all N rows);
    their positions continue from context_length → scores [N]."""
    positions = context_length + jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    hidden = model.backbone(tokens, positions=positions, segment_ids=segment_ids, shared_cache=cache,
                            compute_logits=False).hidden
    picked = jnp.take_along_axis(hidden, last[:, None, None], axis=1)
    return model.score(picked)[:, 0]


@nnx.jit
def score_rows(model: CrossEncoder, tokens, segment_ids, positions, prefix_segments, last):
    """(c) multi-candidate rows [R, L] → scores [R, K]."""
    return model.row_scores(tokens, segment_ids, positions, prefix_segments, last)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(array: np.ndarray, rows: int, fill: int = 0) -> np.ndarray:
    return np.concatenate([array, np.full((rows - len(array),) + array.shape[1:], fill, array.dtype)])


def score_candidates(model: CrossEncoder, context: Sequence[int], candidates: Sequence[Sequence[int]],
                     budget: int, mode: str = "cache", batch: int = 64, per_row: int = 8,
                     max_context: int = 0, context_multiple: int = 64, cache: Optional[KVCache] = None) -> np.ndarray:
    """Scores float32 [n] of n candidates (token ids, question included) after one member context.

    mode: "naive" (a), "cache" (b) or "rows" (c). batch: candidates (naive, cache) or rows (rows)
    per call. The context is padded up to a multiple of `context_multiple` and the candidates to
    `budget`, so calls of other sizes reuse the same compiled shapes. max_context: refuse longer
    contexts (0: no limit). cache: a prefilled (prefill_context) cache to reuse in mode "cache".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layout.check_candidates(candidates, budget)
    if max_context:
        layout.check_context(context, max_context, "the ranker's context budget")
    width = _round_up(max(len(context), 1), context_multiple)
    if mode == "cache":
        cache = cache if cache is not None else prefill_context(model, context, width)
        layout.check_context(context, cache.slots, f"a {cache.slots}-slot cache")
        tokens, segments, last = layout.candidate_block(candidates, budget)
        scores = [np.asarray(score_with_cache(model, cache, jnp.int32(len(context)),
                                              *(_pad_rows(a[i:i + batch], batch) for a in (tokens, segments, last))))
                  for i in range(0, len(candidates), batch)]
        return np.concatenate(scores)[:len(candidates)]
    if mode == "naive":
        rows = layout.naive_rows(context, candidates, budget, width + budget)
        step = batch
        run = lambda r: score_naive(model, r.tokens, r.segment_ids, r.positions, r.last)  # noqa: E731
    else:
        rows = layout.multi_candidate_row(context, candidates, budget, per_row, width + per_row * budget)
        step = max(1, batch // per_row)
        run = lambda r: score_rows(model, r.tokens, r.segment_ids, r.positions, r.prefix_segments, r.last)  # noqa: E731
    out = []
    for i in range(0, len(rows.last), step):
        part = layout.Rows(*(_pad_rows(getattr(rows, f.name)[i:i + step], step, -1 if f.name == "last" else 0)
                             for f in dataclasses.fields(rows)))
        out.append(np.asarray(run(part)))
    return np.concatenate(out).reshape(-1)[:len(candidates)]


def prefill_context(model: CrossEncoder, context: Sequence[int], slots: int) -> KVCache:
    """The context's KVCache (batch 1, `slots` slots, right-padded), dispatched asynchronously:
    this returns as soon as the work is queued."""
    layout.check_context(context, slots, f"a {slots}-slot cache")
    tokens = np.zeros((1, slots), np.int32)
    tokens[0, :len(context)] = context
    return prefill(model, tokens, (np.arange(slots) < len(context)).astype(np.int32)[None])
