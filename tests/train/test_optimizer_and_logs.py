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
from ff_jax.train.validation import recall_at_ks
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
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
              "q": jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32),  # heads kept as their own axis
              "scale": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
              "log_scale": jnp.asarray(3.0, jnp.float32)}  # a learned temperature: a scalar
    tx = make_optimizer(OptimizerConfig(learning_rate=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # Zero gradients leave Adam's step at 0, so the update is the decoupled decay alone: -lr * wd * param.
    for name in ("w", "q"):
        np.testing.assert_allclose(updates[name], -0.1 * 0.5 * np.asarray(params[name]), rtol=1e-6, err_msg=name)
    assert float(jnp.abs(updates["scale"]).max()) == 0 and float(jnp.abs(updates["log_scale"])) == 0


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


def _flat_values(model, filter_) -> dict:
    return {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, filter_))}


def test_a_lora_train_step_moves_adapters_and_head_and_leaves_the_base_unchanged():
    """`only` checked on the result of a real compiled train step, not on the filter that selects it."""
    from ff_jax.model import make_mesh
    from ff_jax.model.sharding import create_sharded
    from ff_jax.train import step as steps
    from ff_jax.train.losses import InfoNCE
    from train_fakes import toy_batches

    cfg = presets.tiny(vocab_size=512, lora_rank=4)
    loss = InfoNCE(learn_temperature=True)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    model = create_sharded(lambda: DualEncoder(Llama(cfg, rngs=nnx.Rngs(0)), EncoderConfig(projection_dim=16),
                                               Scoring.for_loss(loss), rngs=nnx.Rngs(1)), mesh)  # one jit init
    base = nnx.All(nnx.Param, nnx.Not(nnx.Any(nnx.LoRAParam, HeadParam)))
    before = {kind: _flat_values(model, kind) for kind in (base, nnx.LoRAParam, HeadParam)}
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, weight_decay=0.1)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, cfg.lora_rank, 0, mesh)
    batch = toy_batches(1, num_shards=1, per_shard=4, hard_negatives=1)[0]
    batch_sharding = steps.batch_shardings(batch, mesh)
    train_step, _ = steps.jit_steps(graphdef, steps.StepConfig(loss, tx, 3, 3), shardings, batch_sharding, mesh)
    state, metrics = train_step(state, steps.device_batch(batch, batch_sharding))
    assert np.isfinite(float(metrics["loss"]))
    trained = nnx.merge(graphdef, state.params, state.frozen)
    after = {kind: _flat_values(trained, kind) for kind in (base, nnx.LoRAParam, HeadParam)}

    # Every backbone weight (kernels, embeddings, norm scales) is bit-for-bit what it was.
    assert len(before[base]) > 20 and before[base].keys() == after[base].keys()
    for path, value in before[base].items():
        np.testing.assert_array_equal(after[base][path], value, err_msg=str(path))
    # Every adapter B (zero at init, so A has no gradient yet) and every head parameter moved.
    b_paths = [path for path in before[nnx.LoRAParam] if path[-1] == "lora_b"]
    assert len(b_paths) == 2 * 7
    for path in b_paths:
        assert np.abs(after[nnx.LoRAParam][path] - before[nnx.LoRAParam][path]).max() > 0, path
    assert len(before[HeadParam]) == 3  # projection kernel and bias, learned log-temperature
    for path, value in before[HeadParam].items():
        assert np.abs(after[HeadParam][path] - value).max() > 0, path


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


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    """tensorboardX imports torch when installed (a test dependency here): 0.17 GiB in every training
    process. A fresh interpreter writes the events without it, and can still import torch after."""
    import subprocess
    import sys

    script = (f"import sys; from ff_jax.train.metrics_log import MetricsLog; "
              f"log = MetricsLog({str(tmp_path)!r}, total_steps=1, progress=False); log.log(1, {{'loss': 0.5}}); "
              f"log.close(); print('torch' in sys.modules); import torch; print(bool(torch.__version__))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    assert ("train/loss", 1, pytest.approx(0.5)) in _tensorboard_scalars(tmp_path / "tensorboard")


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
