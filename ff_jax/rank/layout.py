"""Host-side layouts of (member context, candidates) for the three scoring paths of
ff_jax.rank.cross_encoder, as numpy arrays. Token ids arrive already tokenised: the context is
the member prompt, each candidate its item prompt followed by the question.

- naive: one row per candidate, context then candidate, right-padded;
- candidate block: the candidates alone, one per row, to extend a prefilled context cache;
- multi-candidate rows: context then K candidates in one row under the shared-prefix mask (the
  context is segment 1, candidate j is segment j + 2 with prefix segment 1), each candidate's
  positions continuing from the context's length.

Every layout names the slot of each candidate's last token (`last`): its score is read there.
Bad input (no candidates, a candidate over its budget, a context over the room) is refused here,
naming what is wrong, before anything is compiled.
"""

import dataclasses
from typing import Sequence

import numpy as np

CONTEXT_SEGMENT = 1


class EmptyCandidates(ValueError):
    """No candidate to score."""


class CandidateTooLong(ValueError):
    """A candidate has more tokens than its budget."""


class ContextTooLong(ValueError):
    """A member context has more tokens than the cache or row holds."""


def check_candidates(candidates: Sequence[Sequence[int]], budget: int) -> None:
    if len(candidates) == 0:
        raise EmptyCandidates("no candidates to score: give at least one candidate")
    for i, candidate in enumerate(candidates):
        if len(candidate) == 0:
            raise EmptyCandidates(f"candidate {i} has no tokens")
        if len(candidate) > budget:
            raise CandidateTooLong(f"candidate {i} has {len(candidate)} tokens, over its budget of {budget} "
                                   "(raise candidate_budget or cut the item prompt)")


def check_context(context: Sequence[int], room: int, what: str) -> None:
    if len(context) == 0:
        raise ContextTooLong("the member context is empty")
    if len(context) > room:
        raise ContextTooLong(f"the member context has {len(context)} tokens, over the {room} of {what}")


@dataclasses.dataclass(frozen=True)
class Rows:
    """tokens, segment_ids, positions, prefix_segments int32 [R, L]; last int32 [R, K] (-1 = no
    candidate there)."""

    tokens: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    prefix_segments: np.ndarray
    last: np.ndarray


def naive_rows(context: Sequence[int], candidates: Sequence[Sequence[int]], budget: int,
               length: int = 0) -> Rows:
    """One row per candidate: the whole context then the candidate (K = 1). length: the row
    width (0: context + budget)."""
    check_candidates(candidates, budget)
    length = length or len(context) + budget
    check_context(context, length - budget, f"a {length}-token row less a {budget}-token candidate")
    rows = Rows(*(np.zeros((len(candidates), length), np.int32) for _ in range(4)),
                last=np.zeros((len(candidates), 1), np.int32))
    for r, candidate in enumerate(candidates):
        ids = list(context) + list(candidate)
        rows.tokens[r, :len(ids)] = ids
        rows.segment_ids[r, :len(ids)] = CONTEXT_SEGMENT
        rows.positions[r, :len(ids)] = np.arange(len(ids))
        rows.last[r, 0] = len(ids) - 1
    return rows


def candidate_block(candidates: Sequence[Sequence[int]], budget: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, segment_ids [n, budget], last [n]) of candidates that extend a cached context.
    Their segment is the context's: each row is that context's continuation."""
    check_candidates(candidates, budget)
    tokens = np.zeros((len(candidates), budget), np.int32)
    segments = np.zeros_like(tokens)
    for r, candidate in enumerate(candidates):
        tokens[r, :len(candidate)] = candidate
        segments[r, :len(candidate)] = CONTEXT_SEGMENT
    return tokens, segments, np.asarray([len(c) - 1 for c in candidates], np.int32)


def multi_candidate_row(context: Sequence[int], candidates: Sequence[Sequence[int]], budget: int,
                        per_row: int, length: int = 0) -> Rows:
    """The context then up to `per_row` candidates per row, as many rows as it takes (the
    context repeated in each). length: the row width (0: context + per_row * budget)."""
    check_candidates(candidates, budget)
    length = length or len(context) + per_row * budget
    check_context(context, length - per_row * budget,
                  f"a {length}-token row less {per_row} candidates of {budget} tokens")
    count = -(-len(candidates) // per_row)
    rows = Rows(*(np.zeros((count, length), np.int32) for _ in range(4)),
                last=np.full((count, per_row), -1, np.int32))
    n = len(context)
    for r in range(count):
        rows.tokens[r, :n] = context
        rows.segment_ids[r, :n] = CONTEXT_SEGMENT
        rows.positions[r, :n] = np.arange(n)
        start = n
        for j, candidate in enumerate(candidates[r * per_row:(r + 1) * per_row]):
            end = start + len(candidate)
            rows.tokens[r, start:end] = candidate
            rows.segment_ids[r, start:end] = CONTEXT_SEGMENT + 1 + j
            rows.prefix_segments[r, start:end] = CONTEXT_SEGMENT
            rows.positions[r, start:end] = n + np.arange(len(candidate))
            rows.last[r, j] = end - 1
            start = end
    return rows
