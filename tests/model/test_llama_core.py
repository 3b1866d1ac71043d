"""Behaviour of the decoder that HF has no counterpart for: packing, KV cache, scan, remat, LoRA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ff_jax.model import KVCache, Llama, presets


@nnx.jit
def run(net, tokens, **kwargs):
    """A jitted forward: eager NNX dispatches op by op and is far slower than compiling once."""
    return net(tokens, **kwargs)


def _tokens(batch, length, vocab=512, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, length)), jnp.int32)


@pytest.fixture(scope="module")
def model():
    return Llama(presets.tiny(), rngs=nnx.Rngs(0))


def _stacked_copy(model: Llama) -> Llama:
    """The same weights in a scan_layers model (leading layer axis)."""
    scanned = Llama(model.config.replace(scan_layers=True), rngs=nnx.Rngs(1))
    per_layer = [nnx.state(block, nnx.Param) for block in model.layers]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    nnx.update(scanned.layers, stacked)
    nnx.update(scanned.embed, nnx.state(model.embed))
    nnx.update(scanned.final_norm, nnx.state(model.final_norm))
    nnx.update(scanned.lm_head, nnx.state(model.lm_head))
    return scanned


def test_packed_segments_match_running_each_prompt_alone(model):
    lengths = [37, 5, 60, 20]
    prompts = [_tokens(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    row = jnp.concatenate(prompts + [jnp.zeros(6, jnp.int32)])[None]  # trailing padding
    segments = jnp.concatenate([jnp.full(n, i + 1) for i, n in enumerate(lengths)] + [jnp.zeros(6)])[None]
    positions = jnp.concatenate([jnp.arange(n) for n in lengths] + [jnp.zeros(6)])[None]
    packed = run(model, row, positions=positions.astype(jnp.int32), segment_ids=segments.astype(jnp.int32))
    start = 0
    for prompt in prompts:
        alone = run(model, prompt[None])
        n = prompt.shape[0]
        np.testing.assert_allclose(packed.hidden[0, start:start + n], alone.hidden[0], atol=2e-5)
        np.testing.assert_allclose(packed.logits[0, start:start + n], alone.logits[0], atol=2e-5)
        start += n


def _packed_padded_batch(length: int, seed: int):
    """Two rows: one packing prompts of 45, 50 and 17 tokens, one a single prompt; both right-padded."""
    rng = np.random.default_rng(seed)
    segments = np.zeros((2, length), np.int32)
    positions = np.zeros((2, length), np.int32)
    start = 0
    for i, n in enumerate([45, 50, 17]):
        segments[0, start:start + n], positions[0, start:start + n] = i + 1, np.arange(n)
        start += n
    segments[1, :90], positions[1, :90] = 1, np.arange(90)
    tokens = rng.integers(0, 512, (2, length)) * (segments > 0)
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(segments), jnp.asarray(positions)


@pytest.mark.parametrize("chunk", [16, 48])
def test_query_tiles_change_neither_outputs_nor_gradients(chunk):
    """Tiled attention skips the key tiles above the diagonal; it must equal one dense tile.

    122 slots: the last tile is partial, and tiles cut through prompts and padding."""
    dense = Llama(presets.tiny(attention_chunk=0), rngs=nnx.Rngs(0))
    tiled = Llama(presets.tiny(attention_chunk=chunk), rngs=nnx.Rngs(0))
    tokens, segments, positions = _packed_padded_batch(122, seed=5)
    real = np.asarray(segments > 0)

    def loss(net):
        hidden = net(tokens, segment_ids=segments, positions=positions, compute_logits=False).hidden
        return jnp.sum(jnp.where(segments[..., None] > 0, hidden, 0.0) ** 2)

    grad = nnx.jit(nnx.value_and_grad(loss))
    (dense_loss, dense_grads), (tiled_loss, tiled_grads) = grad(dense), grad(tiled)
    np.testing.assert_allclose(tiled_loss, dense_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(tiled_grads), jax.tree.leaves(dense_grads)):
        # Summation order differs between tiles: compare against each gradient's own scale.
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()
    out_dense = run(dense, tokens, segment_ids=segments, positions=positions)
    out_tiled = run(tiled, tokens, segment_ids=segments, positions=positions)
    np.testing.assert_allclose(np.asarray(out_tiled.logits)[real], np.asarray(out_dense.logits)[real], atol=2e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_prefill_then_extend_equals_one_pass(model, scan_layers):
    net = _stacked_copy(model) if scan_layers else model
    tokens = _tokens(2, 48, seed=3)
    full = run(net, tokens)
    cache = KVCache.empty(net.config, batch=2, slots=64)
    prefix = run(net, tokens[:, :30], cache=cache)
    step = run(net, tokens[:, 30:41], cache=prefix.cache)
    last = run(net, tokens[:, 41:], cache=step.cache)
    assert int(last.cache.length) == 48
    joined = jnp.concatenate([prefix.logits, step.logits, last.logits], axis=1)
    np.testing.assert_allclose(joined, full.logits, atol=2e-5)


def test_extend_after_right_padded_prefix_with_explicit_positions(model):
    """Rows whose prefixes differ in length share one cache: padding slots are segment 0."""
    tokens = _tokens(2, 40, seed=4)
    prefix_lengths = [25, 18]
    prefix = np.zeros((2, 25), np.int32)
    prefix_segments = np.zeros((2, 25), np.int32)
    for r, n in enumerate(prefix_lengths):
        prefix[r, :n] = tokens[r, :n]
        prefix_segments[r, :n] = 1
    cache = KVCache.empty(model.config, batch=2, slots=48)
    out = run(model, jnp.asarray(prefix), segment_ids=jnp.asarray(prefix_segments), cache=cache)
    suffix = np.stack([np.asarray(tokens[r, n:n + 10]) for r, n in enumerate(prefix_lengths)])
    positions = np.stack([np.arange(n, n + 10) for n in prefix_lengths]).astype(np.int32)
    ext = run(model, jnp.asarray(suffix), positions=jnp.asarray(positions), cache=out.cache)
    for r, n in enumerate(prefix_lengths):
        alone = run(model, tokens[r:r + 1, :n + 10])
        np.testing.assert_allclose(ext.logits[r], alone.logits[0, n:], atol=2e-5)


def test_scan_over_layers_matches_python_loop(model):
    tokens = _tokens(2, 33, seed=5)
    np.testing.assert_allclose(run(_stacked_copy(model), tokens).logits, run(model, tokens).logits, atol=1e-5)


def _primitive_names(jaxpr, out=None) -> set:
    """Every primitive in a jaxpr, nested jaxprs (jit, scan, remat bodies) included."""
    out = set() if out is None else out
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    _primitive_names(sub.jaxpr, out)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    _primitive_names(sub, out)
    return out


def _compiled_gradient(net, tokens):
    """(gradient leaves, primitive names of the gradient's jaxpr, compiled temp bytes)."""
    graphdef, state = nnx.split(net)

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state)(tokens).logits ** 2)

    grad = jax.grad(loss)
    names = _primitive_names(jax.make_jaxpr(grad)(state).jaxpr)
    compiled = jax.jit(grad).lower(state).compile()
    return jax.tree.leaves(compiled(state)), names, compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_changes_memory_not_gradients(model, scan_layers):
    tokens = _tokens(2, 64, seed=6)
    cfg = model.config.replace(scan_layers=scan_layers)
    plain = model if not scan_layers else Llama(cfg, rngs=nnx.Rngs(0))
    remat = Llama(cfg.replace(remat=True), rngs=nnx.Rngs(0))
    g_plain, names_plain, bytes_plain = _compiled_gradient(plain, tokens)
    g_remat, names_remat, bytes_remat = _compiled_gradient(remat, tokens)
    assert len(g_plain) == len(g_remat) > 0
    for a, b in zip(g_plain, g_remat):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The blocks really are rematerialised: a remat (checkpoint) primitive in the gradient's jaxpr.
    is_remat = lambda name: "remat" in name or "checkpoint" in name
    assert any(map(is_remat, names_remat)) and not any(map(is_remat, names_plain)), sorted(names_remat)
    if scan_layers:
        # Measured on XLA:CPU (2x64 tokens, tiny preset): 1.35 MB of temporaries with remat against
        # 3.03 MB without. Unrolled layers leave XLA free to reschedule, so only the scan is checked.
        assert bytes_remat < 0.75 * bytes_plain, (bytes_remat, bytes_plain)


def test_lora_starts_as_identity_and_trains_only_adapters(model):
    lora = Llama(model.config.replace(lora_rank=4), rngs=nnx.Rngs(0))
    nnx.update(lora, nnx.state(model))  # same base weights; adapters keep their own init
    tokens = _tokens(2, 16, seed=7)
    np.testing.assert_allclose(run(lora, tokens).logits, run(model, tokens).logits, atol=1e-6)
    adapters = nnx.state(lora, nnx.LoRAParam)
    # q, k, v, o, gate, up, down in each of the 2 layers, an A and a B each.
    assert len(jax.tree.leaves(adapters)) == 2 * 7 * 2

    def loss(net):
        return jnp.mean(net(tokens).logits ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(lora)
    b_grads = [g for path, g in nnx.to_flat_state(nnx.state(grads, nnx.LoRAParam)) if path[-1] == "lora_b"]
    assert len(b_grads) == 14
    # B starts at zero but A does not, so every B gets a gradient and training can move off identity.
    assert all(float(jnp.abs(g[...]).sum()) > 0 for g in b_grads)


def test_bfloat16_compute_stays_close_to_float32(model):
    tokens = _tokens(2, 64, seed=8)
    bf16 = Llama(model.config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    out = run(bf16, tokens)
    assert out.hidden.dtype == jnp.bfloat16
    reference = run(model, tokens).hidden
    cosine = jnp.sum(out.hidden.astype(jnp.float32) * reference, -1) / (
        jnp.linalg.norm(out.hidden.astype(jnp.float32), axis=-1) * jnp.linalg.norm(reference, axis=-1))
    # Measured on XLA:CPU: 1 - min cosine = 2.0e-5 and a worst relative error of 0.0064 per token;
    # the bounds leave 10x and 5x of slack (a bound of 0.99 would be 500x the measured gap).
    assert 1 - float(cosine.min()) < 2e-4, 1 - float(cosine.min())
    hidden = np.asarray(out.hidden.astype(jnp.float32))
    relative = np.linalg.norm(hidden - reference, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert relative.max() < 0.03, relative.max()


def test_bad_head_configuration_is_rejected():
    with pytest.raises(ValueError, match="num_kv_heads"):
        presets.tiny(num_heads=4, num_kv_heads=3)
