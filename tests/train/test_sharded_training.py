"""The loss on a sharded global batch equals the single-device loss on the same batch: the
in-batch negatives really are gathered across devices, and sharded training follows the same
loss curve for several steps on two mesh shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ff_jax.model import Llama, make_mesh, presets
from ff_jax.model.sharding import create_sharded
from ff_jax.train import step as steps
from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, Scoring
from ff_jax.train.losses import InfoNCE, MatryoshkaInfoNCE, Towers
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from train_fakes import toy_batches

pytestmark = pytest.mark.xdist_group("train_sharded")


def test_gathered_info_nce_on_8_devices_equals_single_device():
    rng = np.random.default_rng(0)
    batch, hard, dim = 16, 2, 32
    towers = Towers(jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32),
                    jnp.asarray(rng.normal(size=(batch, dim)), jnp.float32),
                    jnp.asarray(rng.normal(size=(batch, hard, dim)), jnp.float32),
                    jnp.asarray(rng.random((batch, hard)) > 0.2), jnp.ones((batch,), jnp.float32))
    mesh = make_mesh(data=8)
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = jax.tree.map(lambda x: jax.device_put(x, rows), towers)
    assert len(sharded.member.sharding.device_set) == 8
    for loss_fn in (InfoNCE(), MatryoshkaInfoNCE(dims=(32, 8))):
        single = jax.jit(loss_fn)(towers, jnp.float32(3.0), jnp.float32(0.0))[0]
        across = jax.jit(loss_fn, in_shardings=(rows, None, None))(sharded, jnp.float32(3.0), jnp.float32(0.0))[0]
        # Each device alone would see 2 examples: its local loss is much smaller than the global one.
        local = jax.jit(loss_fn)(jax.tree.map(lambda x: x[:2], towers), jnp.float32(3.0), jnp.float32(0.0))[0]
        np.testing.assert_allclose(float(across), float(single), rtol=1e-5)
        assert abs(float(local) - float(single)) > 0.5


def _train_losses(mesh, batches, num_steps):
    cfg = presets.tiny(vocab_size=512)
    loss = InfoNCE(learn_temperature=True)
    model = create_sharded(lambda: DualEncoder(Llama(cfg, rngs=nnx.Rngs(0)), EncoderConfig(),
                                               Scoring.for_loss(loss), rngs=nnx.Rngs(1)), mesh)
    optimizer = OptimizerConfig(learning_rate=3e-3, warmup_steps=1, total_steps=10)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, 0, 0, mesh)
    batch_sharding = steps.batch_shardings(batches[0], mesh)
    train_step, _ = steps.jit_steps(graphdef, steps.StepConfig(loss, tx, 3, 3, learning_rate_schedule(optimizer)),
                                    shardings, batch_sharding, mesh)
    losses = []
    for batch in batches[:num_steps]:
        state, metrics = train_step(state, steps.device_batch(batch, batch_sharding))
        losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def batches():
    return toy_batches(num_batches=3, num_shards=8, per_shard=2, hard_negatives=1, seed=3)


@pytest.fixture(scope="module")
def single_device_losses(batches):
    return _train_losses(make_mesh(data=1, devices=jax.devices()[:1]), batches, 3)[0]


@pytest.mark.parametrize("shape", [dict(data=8), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_training_follows_the_single_device_losses(batches, single_device_losses, shape):
    losses, state = _train_losses(make_mesh(**shape), batches, 3)
    assert single_device_losses[0] != single_device_losses[-1]  # it trains
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-4)
    kernel = state.params["backbone"]["layers"][0]["mlp"]["up"]["kernel"]
    assert len(kernel[...].sharding.device_set) == 8
