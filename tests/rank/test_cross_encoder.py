"""The three scoring paths of the cross-encoder against an independent naive computation: each
(context + candidate) run alone, unpadded, through the plain backbone, the head applied in numpy."""

import numpy as np
import pytest
from flax import nnx

from ff_jax.model import Llama, presets
from ff_jax.rank.cross_encoder import CrossEncoder, score_candidates

BUDGET = 12
TOLERANCE = 1e-4


def _model(head: str, chunk: int = 16) -> CrossEncoder:
    backbone = Llama(presets.tiny(attention_chunk=chunk), rngs=nnx.Rngs(0))
    return CrossEncoder(backbone, head, answer_ids=(5, 7) if head == "yes_no" else None, rngs=nnx.Rngs(1))


def _ids(n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(1, 512, n)]


@nnx.jit
def _forward(backbone, tokens):
    return backbone(tokens)


def reference_score(model: CrossEncoder, context: list[int], candidate: list[int]) -> float:
    out = _forward(model.backbone, np.asarray([context + candidate], np.int32))
    if model.head_kind == "linear":
        hidden = np.asarray(out.hidden[0, -1], np.float64)
        return float(hidden @ np.asarray(model.kernel[...], np.float64) + float(model.bias[...]))
    logits = np.asarray(out.logits[0, -1])
    return float(logits[5] - logits[7])


@pytest.fixture(scope="module", params=["linear", "yes_no"])
def model(request):
    return _model(request.param)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mode", ["naive", "cache", "rows"])
def test_every_path_equals_the_naive_reference(model, mode, padded):
    """Without padding: a 48-token context (3 tiles of 16, and a multiple of context_multiple) and
    candidates of exactly the budget. With padding: a 41-token context padded to 48, candidates of
    3 to 12 tokens, and a batch the candidates do not fill."""
    if padded:
        context, lengths = _ids(41, 1), [3, 12, 7, 5, 9, 11, 4]
    else:
        context, lengths = _ids(48, 1), [BUDGET] * 6
    candidates = [_ids(n, 100 + i) for i, n in enumerate(lengths)]
    got = score_candidates(model, context, candidates, BUDGET, mode=mode, batch=4, per_row=3, context_multiple=16)
    want = np.asarray([reference_score(model, context, c) for c in candidates])
    assert got.shape == (len(candidates),)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    assert np.ptp(want) > 100 * TOLERANCE  # the candidates' scores differ: a mix-up would show


INVARIANCE_CONTEXT = _ids(30, 2)
INVARIANCE_CANDIDATES = [_ids(n, 200 + i) for i, n in enumerate([5, 9, 12, 3, 8])] + [_ids(11, 300 + i) for i in range(4)]


@pytest.fixture(scope="module")
def invariance_reference(model):
    """The naive reference score of each candidate below, computed once per model for both paths."""
    return np.asarray([reference_score(model, INVARIANCE_CONTEXT, c) for c in INVARIANCE_CANDIDATES])


@pytest.mark.parametrize("mode", ["cache", "rows"])  # naive scores each candidate alone by construction
def test_a_score_ignores_the_other_candidates(model, mode, invariance_reference):
    """Alone, permuted, or among more candidates, each candidate's score is the naive reference's
    (each path against the reference, not against itself: a path wrong in the same way every
    time would pass a self-comparison)."""
    candidates, want = INVARIANCE_CANDIDATES[:5], invariance_reference
    score = lambda cands: score_candidates(model, INVARIANCE_CONTEXT, cands, BUDGET, mode=mode,  # noqa: E731
                                           batch=4, per_row=2)
    order = [4, 2, 0, 3, 1]
    np.testing.assert_allclose(score(candidates), want[:5], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(score(candidates[2:3]), want[2:3], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(score([candidates[i] for i in order]), want[order], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(score(INVARIANCE_CANDIDATES), want, atol=TOLERANCE, rtol=0)
    assert np.ptp(want) > 100 * TOLERANCE


def test_dense_attention_gives_the_same_scores_as_tiles():
    context = _ids(70, 3)
    candidates = [_ids(n, 400 + i) for i, n in enumerate([12, 4, 9])]
    tiled = score_candidates(_model("linear", chunk=16), context, candidates, BUDGET, mode="rows", per_row=3)
    dense = score_candidates(_model("linear", chunk=0), context, candidates, BUDGET, mode="rows", per_row=3)
    np.testing.assert_allclose(tiled, dense, atol=TOLERANCE)
