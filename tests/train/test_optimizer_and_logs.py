"""Optimiser schedule / accumulation / LoRA selection, and the metric writers, against references."""

import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ff_jax.model import Llama, presets
from ff_jax.train.dual_encoder import Constant, DualEncoder, EncoderConfig, HeadParam, Scoring
from ff_jax.train.loop import recall_at_ks
from ff_jax.train.metrics_log import MetricsLog, read_jsonl
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ff_jax.train.pca import PCA
from ff_jax.train.step import split_model


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    cfg = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110, final_lr_ratio=0.1)
    schedule = learning_rate_schedule(cfg)
    for step in (0, 5, 10, 35, 60, 110):
        if step <= 10:
            expected = 1e-3 * step / 10
        else:
            progress = (step - 10) / 100
            expected = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-10)


def test_accumulating_two_batches_equals_one_update_on_their_mean_gradient():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
    g1 = {"w": jnp.full((3, 2), 0.2), "b": jnp.array([0.1, -0.3])}
    g2 = {"w": jnp.full((3, 2), -0.6), "b": jnp.array([0.5, 0.1])}
    settings = dict(learning_rate=1e-2, warmup_steps=0, total_steps=10, clip_norm=100.0)
    accumulate = make_optimizer(OptimizerConfig(accumulation_steps=2, **settings))
    state = accumulate.init(params)
    u1, state = accumulate.update(g1, state, params)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(u1))  # no update after the first batch
    u2, _ = accumulate.update(g2, state, params)
    plain = make_optimizer(OptimizerConfig(**settings))
    mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    expected, _ = plain.update(mean, plain.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u2, expected)


def test_weight_decay_spares_vectors_and_scalars():
    params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(updates["w"][0, 0]) < 0 and float(jnp.abs(updates["scale"]).max()) == 0


def test_lora_training_selects_adapters_and_head_only():
    cfg = presets.tiny(vocab_size=512, lora_rank=4)
    model = nnx.eval_shape(lambda: DualEncoder(Llama(cfg, rngs=nnx.Rngs(0)), EncoderConfig(projection_dim=16),
                                               Scoring(0.05, True), rngs=nnx.Rngs(1)))
    _, trainable, frozen = split_model(model, cfg.lora_rank)
    kinds = {type(v) for v in jax.tree.leaves(trainable, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    assert kinds == {nnx.LoRAParam, HeadParam}
    assert "lora_a" in str(trainable) and "kernel" in str(frozen)
    _, full, rest = split_model(model, 0)
    assert "lora_a" not in str(rest) and "log_scale" in str(full)
    _, _, fixed = split_model(nnx.eval_shape(lambda: DualEncoder(Llama(presets.tiny(), rngs=nnx.Rngs(0)),
                                                                  scoring=Scoring(0.05, False), rngs=nnx.Rngs(1))), 0)
    assert any(isinstance(v, Constant) for v in jax.tree.leaves(fixed, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def _tensorboard_scalars(directory):
    """Minimal TFRecord reader: (tag, step, value) of every scalar in the event files."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                out.append((value.tag, event.step, value.simple_value))
    return out


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    log = MetricsLog(tmp_path, total_steps=3, progress=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": jnp.float32(1.0 / step), "examples": 8.0, "tokens": 100.0, "vector": np.ones(3)})
    log.log(3, {"recall@10": 0.25}, split="validation")
    log.close()
    train = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in train] == [1, 2, 3] and "vector" not in train[0]
    assert "examples_per_s" in train[1] and "examples_per_s" not in train[0]
    assert read_jsonl(tmp_path / "metrics.jsonl", "validation")[0]["recall@10"] == 0.25
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert ("train/loss", 2, pytest.approx(0.5)) in scalars
    assert ("validation/recall_at_10", 3, pytest.approx(0.25)) in scalars


def test_recall_at_k_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    members, corpus = rng.normal(size=(20, 8)), rng.normal(size=(50, 8))
    targets = [set(rng.choice(50, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(20)]
    exclude = [set(rng.choice(50, size=3, replace=False).tolist()) - t for t in targets]
    recalls = recall_at_ks(members, corpus, targets, (1, 5, 50), exclude)
    for k in (1, 5, 50):
        expected = []
        for m, t, skip in zip(members, targets, exclude):
            ranked = [i for i in np.argsort(-(corpus @ m)) if i not in skip][:k]
            expected.append(len(t & set(ranked)) / len(t))
        assert recalls[k] == pytest.approx(np.mean(expected))


def test_pca_keeps_the_top_variance_directions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    pca = PCA.fit(x, 2)
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    np.testing.assert_allclose(pca.explained_variance_ratio, eigenvalues[:2] / eigenvalues.sum(), rtol=1e-4)
    projected = pca.transform(x)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="PCA dim"):
        PCA.fit(x, 7)
