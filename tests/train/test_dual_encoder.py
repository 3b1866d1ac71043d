"""Pooling against numpy, and packing invariance: a prompt packed with others embeds as it does alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ff_jax.data.packing import OneTowerBatcher, RowSpec, stack_shards
from ff_jax.model import Llama, presets
from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, gather_slots, pool


def numpy_pool(hidden, segment_ids, segments, pooling, last_n=0):
    rows, _, dim = hidden.shape
    out = np.zeros((rows * segments, dim))
    for r in range(rows):
        for s in range(segments):
            idx = np.flatnonzero(segment_ids[r] == s + 1)
            if len(idx) == 0:
                continue
            keep = {"mean": idx, "last": idx[-1:], "last_n": idx[-last_n:]}[pooling]
            out[r * segments + s] = hidden[r, keep].mean(axis=0)
    return out


@pytest.mark.parametrize("pooling,last_n", [("mean", 0), ("last", 0), ("last_n", 3)])
def test_pool_matches_numpy(pooling, last_n):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 12, 5)).astype(np.float32)
    # Row 0: segments of 4, 1, 5 tokens and 2 padding; row 1: one segment; row 2: all padding.
    segment_ids = np.array([[1] * 4 + [2] + [3] * 5 + [0] * 2, [1] * 12, [0] * 12], np.int32)
    got = jax.jit(pool, static_argnums=(2, 3, 4))(hidden, segment_ids, 3, pooling, last_n)
    np.testing.assert_allclose(np.asarray(got), numpy_pool(hidden, segment_ids, 3, pooling, last_n), atol=1e-6)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling"):
        EncoderConfig(pooling="max")
    with pytest.raises(ValueError, match="last_n"):
        EncoderConfig(pooling="last_n")


def _jit_init(factory):
    """Builds a module inside one jit (eager init dispatches hundreds of tiny ops)."""
    graphdef, _ = nnx.split(nnx.eval_shape(factory))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(factory()))())


@pytest.fixture(scope="module")
def backbone():
    return _jit_init(lambda: Llama(presets.tiny(vocab_size=512), rngs=nnx.Rngs(0)))


@nnx.jit(static_argnums=(5,))
def _encode(encoder, tokens, segments, positions, slot, segments_per_row):
    return encoder.encode(tokens, segments, positions, slot, segments_per_row)


@nnx.jit
def _hidden_alone(backbone, tokens):
    return backbone(tokens, compute_logits=False).hidden


@pytest.mark.parametrize("pooling", ["mean", "last_n"])
def test_packed_prompts_embed_as_they_do_alone(backbone, pooling):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(1, 512, size=n).astype(np.int32) for n in (9, 5, 14, 3, 7, 11)]
    spec = RowSpec(rows=3, length=24, max_segments=3)
    shards = []
    for part in (prompts[:3], prompts[3:]):  # two shards
        batcher = OneTowerBatcher(capacity=3, spec=spec, pad_id=0)
        for i, tokens in enumerate(part):
            assert batcher.add({"tokens": tokens, "id": str(i)})
        shards.append(batcher.build())
    batch = stack_shards(shards)
    assert batch.segment_ids.max() >= 2  # really packed
    encoder = DualEncoder(backbone, EncoderConfig(pooling=pooling, last_n=4), rngs=nnx.Rngs(1))
    got = _encode(encoder, jnp.asarray(batch.tokens), jnp.asarray(batch.segment_ids),
                  jnp.asarray(batch.positions), jnp.asarray(batch.slot), spec.max_segments)
    # Alone: one prompt per row, padded to one common length with segment id 0.
    alone = np.zeros((len(prompts), 16), np.int32)
    for i, tokens in enumerate(prompts):
        alone[i, : len(tokens)] = tokens
    hidden_alone = np.asarray(_hidden_alone(backbone, jnp.asarray(alone)))
    for i, tokens in enumerate(prompts):
        hidden = hidden_alone[i, : len(tokens)]
        expected = hidden.mean(0) if pooling == "mean" else hidden[-4:].mean(0)
        np.testing.assert_allclose(np.asarray(got[i]), expected, atol=2e-5, err_msg=f"prompt {i}")


def test_projection_head_and_matryoshka_slices(backbone):
    encoder = DualEncoder(backbone, EncoderConfig(projection_dim=32, projection_hidden=48), rngs=nnx.Rngs(2))
    tokens = jnp.arange(1, 17, dtype=jnp.int32).reshape(1, 2, 8)
    segments = jnp.ones((1, 2, 8), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (1, 2, 8))
    slot = jnp.array([[0, 1]], jnp.int32)
    raw, full, eighth = map(np.asarray, nnx.jit(lambda e: (e.encode(tokens, segments, positions, slot, 1),
                                                             e.embed(tokens, segments, positions, slot, 1),
                                                             e.embed(tokens, segments, positions, slot, 1, dim=4)))(encoder))
    assert raw.shape == (2, 32) and encoder.embedding_dim == 32
    # The head in numpy on the mean-pooled hidden states: x @ k0 + b0, SiLU, @ k1 + b1.
    pooled = np.asarray(_hidden_alone(backbone, tokens[0]), np.float64).mean(axis=1)
    k0, k1 = (np.asarray(k[...], np.float64) for k in encoder.head.kernels)
    b0, b1 = (np.asarray(b[...], np.float64) for b in encoder.head.biases)
    assert k0.shape == (64, 48) and k1.shape == (48, 32)
    h = pooled @ k0 + b0
    np.testing.assert_allclose(raw, (h / (1 + np.exp(-h))) @ k1 + b1, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(eighth, raw[:, :4] / np.linalg.norm(raw[:, :4], axis=1, keepdims=True), rtol=1e-5)


def _numpy_info_nce(member, positive, negatives, positive_key, negative_key, temperature):
    """InfoNCE over [every in-batch positive + every hard negative], in float64, row by row; a
    candidate that is the same item as the row's positive (other than the positive itself) is left out."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    member, positive, negatives = unit(member), unit(positive), unit(negatives)
    losses = []
    for b in range(len(member)):
        candidates = [positive[b]] + [positive[j] for j in range(len(member))
                                      if j != b and positive_key[j] != positive_key[b]]
        candidates += [negatives[j, h] for j in range(len(member)) for h in range(negatives.shape[1])
                       if negative_key[j, h] != positive_key[b]]
        logits = np.stack(candidates) @ member[b] / temperature
        losses.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0])
    return float(np.mean(losses))


@pytest.mark.parametrize("hard", [0, 2])
def test_towers_of_a_training_batch_with_and_without_hard_negatives(backbone, hard):
    """Every tower row is `embed` of that example's prompt run alone (one prompt per row, unpacked),
    and the loss on the towers is a numpy InfoNCE over those alone-embeddings."""
    from ff_jax.train.losses import InfoNCE
    from train_fakes import toy_batches, toy_examples

    batch = jax.tree.map(jnp.asarray, toy_batches(1, num_shards=2, per_shard=3, hard_negatives=hard)[0])
    examples = toy_examples(6, seed=0, hard_negatives=hard)  # the six examples toy_batches packed, in order
    assert int(batch.member_segment_ids.max()) >= 2  # really packed
    encoder = DualEncoder(backbone, rngs=nnx.Rngs(3))
    towers, loss = nnx.jit(lambda e, b: (t := e.towers(b, 3, 3), InfoNCE()(t, e.scoring.log_scale[...],
                                                                             e.scoring.bias[...])[0]))(encoder, batch)
    assert towers.member.shape == (6, 64) and towers.negatives.shape == (6, hard, 64)
    assert towers.positive_key.shape == (6,) and np.isfinite(float(loss))

    # Alone: each prompt in its own row of a [1, P, L] batch, one segment per row, padded with segment 0.
    prompts = [e["member"] for e in examples] + [t for e in examples for t in e["items"]]
    length = max(len(t) for t in prompts)
    tokens, segments = np.zeros((1, len(prompts), length), np.int32), np.zeros((1, len(prompts), length), np.int32)
    for i, t in enumerate(prompts):
        tokens[0, i, : len(t)], segments[0, i, : len(t)] = t, 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)
    slot = np.arange(len(prompts), dtype=np.int32)[None]
    alone = np.asarray(nnx.jit(lambda e: e.embed(jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions),
                                                 jnp.asarray(slot), 1))(encoder))
    alone_raw = np.asarray(_encode(encoder, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(positions),
                                   jnp.asarray(slot), 1))
    member_alone = alone[:6]
    item_alone = alone[6:].reshape(6, 1 + hard, -1)
    unit = lambda x: np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)
    np.testing.assert_allclose(unit(towers.member), member_alone, atol=2e-5)
    np.testing.assert_allclose(np.asarray(towers.member), alone_raw[:6], atol=2e-5)  # un-normalised too
    np.testing.assert_allclose(unit(towers.positive), item_alone[:, 0], atol=2e-5)
    np.testing.assert_allclose(unit(towers.negatives), item_alone[:, 1:], atol=2e-5)
    assert np.asarray(towers.negative_mask).all() and np.asarray(towers.example_mask).tolist() == [1.0] * 6
    keys = np.stack([e["item_keys"] for e in examples])
    np.testing.assert_array_equal(np.asarray(towers.positive_key), keys[:, 0])
    np.testing.assert_array_equal(np.asarray(towers.negative_key), keys[:, 1:])

    # The loss on those towers, against numpy on the alone-embeddings (default temperature 0.05).
    expected = _numpy_info_nce(alone_raw[:6].astype(np.float64), item_alone[:, 0].astype(np.float64),
                               item_alone[:, 1:].astype(np.float64), keys[:, 0], keys[:, 1:], 0.05)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4, atol=1e-4)


def test_both_towers_run_through_one_layer_scan_and_equal_each_tower_alone():
    """Member and item rows of one length share one backbone call: one scan over the layers (and one
    backward), where two calls would make XLA keep a gradient accumulator per weight per tower."""
    from train_fakes import toy_batches

    scanned = _jit_init(lambda: Llama(presets.tiny(vocab_size=512, scan_layers=True), rngs=nnx.Rngs(0)))
    encoder = DualEncoder(scanned, rngs=nnx.Rngs(3))
    batch = jax.tree.map(jnp.asarray, toy_batches(1, num_shards=2, per_shard=3, hard_negatives=1)[0])
    graphdef, state = nnx.split(encoder)

    def member_embeddings(state):
        return nnx.merge(graphdef, state).towers(batch, 3, 3).member

    jaxpr = jax.make_jaxpr(member_embeddings)(state)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 1

    towers = nnx.jit(lambda e: e.towers(batch, 3, 3))(encoder)
    each = nnx.jit(lambda e: (e.encode_rows(batch.member_tokens, batch.member_segment_ids, batch.member_positions, 3),
                              e.encode_rows(batch.item_tokens, batch.item_segment_ids, batch.item_positions, 3)))
    members, items = each(encoder)  # each tower through its own backbone call
    np.testing.assert_allclose(np.asarray(towers.member).reshape(2, 3, -1),
                               np.asarray(gather_slots(members, batch.member_slot)[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(towers.positive).reshape(2, 3, -1),
                               np.asarray(gather_slots(items, batch.positive_slot)[0]), atol=1e-5)
