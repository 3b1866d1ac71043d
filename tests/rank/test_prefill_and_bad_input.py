"""Prefill dispatched before retrieval, scored after it; and the ranker's bad input, each refused
with an error naming what is wrong."""

import json

import numpy as np
import pytest
from flax import nnx

from ff_jax.model import Llama, presets
from ff_jax.train.run import DUAL_ENCODER, RANKER, WrongCheckpointKind, check_kind
from ff_jax.rank.cross_encoder import CrossEncoder, RankerConfig, prefill_context, score_candidates
from ff_jax.rank.layout import CandidateTooLong, ContextTooLong, EmptyCandidates
from ff_jax.rank.prefill import start_prefill

BUDGET = 10


@pytest.fixture(scope="module")
def model():
    return CrossEncoder(Llama(presets.tiny(attention_chunk=16), rngs=nnx.Rngs(0)), "linear", rngs=nnx.Rngs(1))


def _ids(n, seed):
    return [int(t) for t in np.random.default_rng(seed).integers(1, 512, n)]


def test_prefill_started_before_retrieval_scores_what_retrieval_returns(model):
    context = _ids(37, 0)
    pending = start_prefill(model, context, context_multiple=16)
    # Retrieval meanwhile: exact top-5 of a random corpus for a random member vector.
    rng = np.random.default_rng(1)
    corpus, member = rng.normal(size=(200, 8)), rng.normal(size=8)
    retrieved = np.argsort(-(corpus @ member))[:5]
    candidates = [_ids(3 + int(i) % BUDGET - 2, 100 + int(i)) for i in retrieved]
    scores = pending.score(candidates, BUDGET, batch=4)
    assert pending.ready()
    naive = score_candidates(model, context, candidates, BUDGET, mode="naive", batch=4)
    np.testing.assert_allclose(scores, naive, atol=1e-4)


def test_a_context_longer_than_the_cache_is_refused(model):
    with pytest.raises(ContextTooLong, match="70 tokens, over the 64 of a 64-slot cache"):
        start_prefill(model, _ids(70, 2), context_multiple=16, max_context=64)
    cache = prefill_context(model, _ids(20, 3), 32)
    with pytest.raises(ContextTooLong, match="40 tokens, over the 32 of a 32-slot cache"):
        score_candidates(model, _ids(40, 3), [_ids(4, 4)], BUDGET, mode="cache", cache=cache)
    with pytest.raises(ContextTooLong, match="the ranker's context budget"):
        score_candidates(model, _ids(40, 3), [_ids(4, 4)], BUDGET, mode="rows", max_context=32)


@pytest.mark.parametrize("mode", ["naive", "cache", "rows"])
def test_zero_candidates_and_a_candidate_over_its_budget_are_refused(model, mode):
    with pytest.raises(EmptyCandidates, match="no candidates to score"):
        score_candidates(model, _ids(20, 5), [], BUDGET, mode=mode)
    with pytest.raises(CandidateTooLong, match=f"candidate 1 has 11 tokens, over its budget of {BUDGET}"):
        score_candidates(model, _ids(20, 5), [_ids(4, 6), _ids(11, 7)], BUDGET, mode=mode)
    with pytest.raises(EmptyCandidates, match="candidate 0 has no tokens"):
        score_candidates(model, _ids(20, 5), [[]], BUDGET, mode=mode)


def test_bad_ranker_settings_name_the_field():
    with pytest.raises(ValueError, match="RankerConfig.head must be one of"):
        RankerConfig(head="cosine")

    class TwoTokens:
        def encode(self, text):
            return [1, 2]

    with pytest.raises(ValueError, match="RankerConfig.yes_token=' yes' is 2 tokens"):
        RankerConfig(head="yes_no").answer_ids(TwoTokens())


def test_run_kinds(tmp_path):
    dual, ranker = tmp_path / "dual", tmp_path / "ranker"
    dual.mkdir()
    ranker.mkdir()
    (dual / "run.json").write_text(json.dumps({"model": None}))  # dual-encoder runs name no kind
    (ranker / "run.json").write_text(json.dumps({"kind": RANKER}))
    check_kind(dual, DUAL_ENCODER)
    check_kind(ranker, RANKER)
    with pytest.raises(WrongCheckpointKind, match="holds a dual encoder run, not a ranker"):
        check_kind(dual, RANKER)
    with pytest.raises(WrongCheckpointKind, match="holds a ranker run, not a dual encoder"):
        check_kind(ranker, DUAL_ENCODER)
    with pytest.raises(FileNotFoundError, match="no run.json"):
        check_kind(tmp_path, RANKER)
