"""The one mask rule's shared-prefix extension and the read-only shared cache, at the model level:
each against running every (context, candidate) pair alone, the naive computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ff_jax.model import KVCache, Llama, presets
from ff_jax.model.attention import attention_mask


@nnx.jit
def run(net, tokens, **kwargs):
    return net(tokens, **kwargs)


def _ids(n, seed):
    return np.random.default_rng(seed).integers(1, 512, n).astype(np.int32)


def test_mask_matches_a_loop_over_query_key_pairs():
    rng = np.random.default_rng(0)
    segments = rng.integers(0, 4, (3, 11)).astype(np.int32)
    prefixes = rng.integers(0, 3, (3, 11)).astype(np.int32)
    got = np.asarray(attention_mask(jnp.arange(11), jnp.arange(11), segments, segments, prefixes))
    for b in range(3):
        for t in range(11):
            for s in range(11):
                seen = s <= t and segments[b, s] != 0 and segments[b, s] in (segments[b, t], prefixes[b, t])
                assert got[b, t, s] == seen, (b, t, s)


@pytest.mark.parametrize("chunk", [0, 16])
def test_candidates_in_one_row_see_the_context_and_themselves_only(chunk):
    """Row: context (segment 1) | three candidates (2, 3, 4; prefix 1) | padding; positions of each
    candidate continue from the context's length. With chunk 16 the 40-token context and the
    candidates cross query tiles."""
    model = Llama(presets.tiny(attention_chunk=chunk), rngs=nnx.Rngs(0))
    context, candidates = _ids(40, 1), [_ids(n, 10 + n) for n in (7, 12, 3)]
    tokens = np.concatenate([context, *candidates, np.zeros(5, np.int32)])
    segments = np.concatenate([np.full(40, 1)] + [np.full(len(c), i + 2) for i, c in enumerate(candidates)]
                              + [np.zeros(5)]).astype(np.int32)
    prefixes = np.where(segments > 1, 1, 0).astype(np.int32)
    positions = np.concatenate([np.arange(40)] + [40 + np.arange(len(c)) for c in candidates]
                               + [np.zeros(5)]).astype(np.int32)
    row = run(model, jnp.asarray(tokens[None]), segment_ids=jnp.asarray(segments[None]),
              positions=jnp.asarray(positions[None]), prefix_segments=jnp.asarray(prefixes[None]))
    start = 40
    for candidate in candidates:
        alone = run(model, jnp.asarray(np.concatenate([context, candidate])[None]))
        np.testing.assert_allclose(row.logits[0, :40], alone.logits[0, :40], atol=2e-5)
        np.testing.assert_allclose(row.logits[0, start:start + len(candidate)], alone.logits[0, 40:], atol=2e-5)
        start += len(candidate)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_shared_cache_of_batch_one_serves_every_row_without_a_copy(scan_layers):
    model = Llama(presets.tiny(scan_layers=scan_layers), rngs=nnx.Rngs(0))
    context = _ids(30, 2)
    candidates = np.stack([_ids(9, 20 + i) for i in range(4)])
    # Right-padded context: 30 real tokens in a 36-slot cache, so positions are passed explicitly.
    cache = KVCache.empty(model.config, batch=1, slots=36)
    padded = np.concatenate([context, np.zeros(6, np.int32)])[None]
    segments = (np.arange(36) < 30).astype(np.int32)[None]
    shared = run(model, jnp.asarray(padded), segment_ids=jnp.asarray(segments), cache=cache).cache
    positions = jnp.asarray(np.broadcast_to(30 + np.arange(9), (4, 9)).astype(np.int32))
    out = run(model, jnp.asarray(candidates), positions=positions, shared_cache=shared)
    assert out.cache is None  # read only
    for i, candidate in enumerate(candidates):
        alone = run(model, jnp.asarray(np.concatenate([context, candidate])[None]))
        np.testing.assert_allclose(out.logits[i], alone.logits[0, 30:], atol=2e-5)
    # No array of the compiled computation holds the cache's slots once per candidate row.
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda st, s: nnx.merge(graphdef, st)(
        jnp.asarray(candidates), positions=positions, shared_cache=s))(state, shared)
    shapes = {tuple(v.aval.shape) for eqn in _equations(jaxpr.jaxpr) for v in eqn.outvars}
    cfg = model.config
    assert not [s for s in shapes if len(s) >= 3 and s[0] == 4 and 36 in s and cfg.head_dim in s], shapes


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


def test_extending_and_reading_a_cache_at_once_is_refused():
    model = Llama(presets.tiny(), rngs=nnx.Rngs(0))
    cache = KVCache.empty(model.config, batch=1, slots=8)
    with pytest.raises(ValueError, match="not both"):
        model(jnp.ones((1, 2), jnp.int32), cache=cache, shared_cache=cache)
