"""Member-context prefill in parallel with retrieval.

    pending = start_prefill(model, context_ids)     # dispatched; returns at once
    candidates = index.search(member_vector, k)     # retrieval runs meanwhile (ScaNN: CPU threads)
    scores = pending.score(candidate_ids, budget)   # waits for the cache only if it is not done

JAX dispatches a compiled computation asynchronously: the call returns futures (jax.Array) while
the device, or XLA:CPU's own thread pool, computes. `start_prefill` therefore costs only the
dispatch once its shapes are compiled; the first call for a new context width compiles on the
calling thread (call `warm_up` at start-up). The context is padded to a multiple of
`context_multiple` so a few widths cover every member.
"""

import dataclasses
from typing import Sequence

import numpy as np

from ff_jax.model import KVCache
from ff_jax.rank.cross_encoder import CrossEncoder, prefill_context, score_candidates


@dataclasses.dataclass
class PendingContext:
    """A member context whose KV cache is being computed (or is done)."""

    model: CrossEncoder
    context: list[int]
    cache: KVCache

    def ready(self) -> bool:
        """True once the cache is computed (never blocks)."""
        return self.cache.k.is_ready() and self.cache.v.is_ready()

    def score(self, candidates: Sequence[Sequence[int]], budget: int, batch: int = 64) -> np.ndarray:
        """Scores [n] of the candidates (token ids, question included) against this context."""
        return score_candidates(self.model, self.context, candidates, budget, mode="cache", batch=batch,
                                cache=self.cache)


def start_prefill(model: CrossEncoder, context: Sequence[int], context_multiple: int = 64,
                  max_context: int = 0) -> PendingContext:
    """Dispatches the context's prefill and returns without waiting for it. max_context: refuse
    longer contexts (0: no limit)."""
    context = [int(t) for t in context]
    width = -(-max(len(context), 1) // context_multiple) * context_multiple
    if max_context:
        width = min(width, max(max_context, 1))
    return PendingContext(model, context, prefill_context(model, context, width))


def warm_up(model: CrossEncoder, widths: Sequence[int], budget: int, batch: int = 64) -> None:
    """Compiles the prefill for each context width and the scoring of a batch of candidates."""
    for width in widths:
        start_prefill(model, [1] * width, context_multiple=width).score([[1] * budget], budget, batch)
