"""Pure, jitted train and eval steps over a (data, fsdp, tensor) mesh.

The model travels as (graphdef, state): `graphdef` is static, the state is a plain pytree, so each
step is one `jax.jit` with explicit in/out shardings — the modern spelling of pjit — and the same
code runs on one CPU, 8 forced CPU devices, a GPU, or many hosts under jax.distributed.

Batches are the typed pytrees of ff_jax.data.batches (DualTowerBatch for train/eval steps,
EmbeddingBatch for embed steps; docs/contracts.md). Their leading shard axis N is sharded over the
logical "batch" axis (data and fsdp). The losses see global arrays, so XLA inserts the cross-device
all-gather of in-batch negatives itself.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from ff_jax.data.batches import DualTowerBatch, EmbeddingBatch, device_part, segment_id_arrays
from ff_jax.model.sharding import DEFAULT_RULES, Rules, batch_shards, logical_to_spec, state_shardings, use_rules
from ff_jax.train.dual_encoder import DualEncoder
from ff_jax.train.optimizer import trainable_filter


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: batches consumed
    params: Any  # nnx.State: what the optimiser updates
    frozen: Any  # nnx.State: the rest (a LoRA-frozen backbone, fixed temperature)
    opt_state: Any
    rng: jax.Array  # uint32 raw key data, split once per step


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What a step needs besides state and batch (all static)."""

    loss: Callable
    tx: optax.GradientTransformation
    member_segments: int
    item_segments: int
    schedule: Optional[Callable] = None  # learning rate of an update count, for logging
    accumulation_steps: int = 1
    # (model, batch) -> (loss, metrics) for a model other than the dual encoder (the ranker,
    # ff_jax.rank.train); None: the dual encoder's towers under `loss`.
    objective: Optional[Callable] = None
    skip_nonfinite: bool = False  # a step whose loss, gradient or update is not finite keeps the old state


def split_model(model: DualEncoder, lora_rank: int):
    """graphdef, trainable state, frozen state."""
    return nnx.split(model, trainable_filter(lora_rank), ...)


def init_train_state(model: DualEncoder, tx: optax.GradientTransformation, lora_rank: int, seed: int,
                     mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
    """(graphdef, TrainState, TrainState of shardings) with the optimiser state born sharded."""
    graphdef, params, frozen = split_model(model, lora_rank)
    shardings = train_state_shardings(tx, params, frozen, mesh, rules)
    with jax.set_mesh(mesh):
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
        rng = jax.device_put(jax.random.key_data(jax.random.key(seed)), shardings.rng)
        step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
        params = jax.device_put(params, shardings.params)
        frozen = jax.device_put(frozen, shardings.frozen)
    return graphdef, TrainState(step, params, frozen, opt_state, rng), shardings


def train_state_shardings(tx, params, frozen, mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = state_shardings(params, mesh, rules)
    abstract_opt = jax.eval_shape(tx.init, params)
    # Optimiser moments mirror their parameter's sharding; counters are replicated.
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt, param_shardings,
        transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_shardings, frozen=state_shardings(frozen, mesh, rules),
                      opt_state=opt_shardings, rng=replicated)


def batch_shardings(batch, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES):
    """A batch of the same type holding one NamedSharding per array: the shard axis N over the
    logical "batch" axis. Host-only fields (ids) are dropped (ff_jax.data.batches.device_part)."""
    size = batch_shards(mesh, rules)

    def sharding(path, value):
        shape = np.shape(value)
        spec = logical_to_spec(("batch",) + (None,) * (len(shape) - 1), dict(mesh.shape), rules)
        if shape[0] % size:
            raise ValueError(f"batch{jax.tree_util.keystr(path)} has {shape[0]} shards on its leading axis; the mesh "
                             f"splits the batch {size} ways ({spec[0]}): make the pipeline's num_shards a multiple "
                             f"of {size}")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, device_part(batch))


def device_batch(batch, shardings, process_local: bool = True):
    """Host numpy batch → the same batch type of global jax arrays, host-only fields dropped.

    With several processes, a process-local batch holds only this process's shards (the training
    pipeline reads one slice of the records per process); a global one (process_local=False, e.g.
    validation batches every process builds whole) is cut to each process's devices here.
    """
    batch = device_part(batch)

    def place(value, sharding):
        value = np.asarray(value)
        if jax.process_count() == 1:
            return jax.device_put(value, sharding)
        if process_local:
            return jax.make_array_from_process_local_data(sharding, value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, batch, shardings)


def _tokens(batch: DualTowerBatch) -> jax.Array:
    return sum(jnp.sum(segments > 0) for segments in segment_id_arrays(batch))


def _loss_and_metrics(graphdef, cfg: StepConfig, params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    if cfg.objective is not None:
        loss, metrics = cfg.objective(model, batch)
        return loss, (metrics, None)
    towers = model.towers(batch, cfg.member_segments, cfg.item_segments)
    loss, metrics = cfg.loss(towers, model.scoring.log_scale[...], model.scoring.bias[...])
    return loss, (metrics, towers)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(graphdef, cfg: StepConfig, state: TrainState, batch: DualTowerBatch) -> tuple[TrainState, dict]:
    """One optimiser step (or one accumulation micro-step): a pure function of its arguments.

    metrics["finite"]: loss, gradient norm and the updated parameters are all finite (the loop stops
    on a step without, before saving it). With cfg.skip_nonfinite such a step keeps the parameters
    and optimiser state it started from (the batch still counts as consumed).
    """
    grad_fn = jax.value_and_grad(functools.partial(_loss_and_metrics, graphdef, cfg), has_aux=True)
    (loss, (metrics, _)), grads = grad_fn(state.params, state.frozen, batch)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    if cfg.skip_nonfinite:
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite,
                   examples=jnp.sum(batch.example_mask), tokens=_tokens(batch))
    if cfg.schedule is not None:
        metrics["learning_rate"] = cfg.schedule(state.step // cfg.accumulation_steps)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              rng=jax.random.key_data(rng))
    return new_state, metrics


def eval_step(graphdef, cfg: StepConfig, state: TrainState, batch: DualTowerBatch) -> dict:
    """Loss and metrics of a batch without updating (recall@K embeds the corpus separately)."""
    loss, (metrics, _) = _loss_and_metrics(graphdef, cfg, state.params, state.frozen, batch)
    return dict(metrics, loss=loss)


def embed_step(graphdef, segments: int, state: TrainState, batch: EmbeddingBatch) -> jax.Array:
    """Un-normalised embeddings [N * B/N, E] of a one-tower batch (callers slice / normalise)."""
    model = nnx.merge(graphdef, state.params, state.frozen)
    return model.encode(batch.tokens, batch.segment_ids, batch.positions, batch.slot, segments)


def jit_embed(graphdef, segments: int, shardings: TrainState, mesh, rules=DEFAULT_RULES):
    """Compiled embed step taking (state, device batch); the output is replicated for the host."""
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(functools.partial(embed_step, graphdef, segments), out_shardings=replicated)

    def run(state, batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return fn(state, batch)

    return run


def jit_steps(graphdef, cfg: StepConfig, shardings: TrainState, batch_sharding: DualTowerBatch, mesh,
              rules=DEFAULT_RULES):
    """Compiled (train_step, eval_step) taking (state, batch) with explicit shardings."""
    replicated = NamedSharding(mesh, PartitionSpec())
    train = jax.jit(functools.partial(train_step, graphdef, cfg), in_shardings=(shardings, batch_sharding),
                    out_shardings=(shardings, replicated), donate_argnums=(0,))
    evaluate = jax.jit(functools.partial(eval_step, graphdef, cfg), in_shardings=(shardings, batch_sharding),
                       out_shardings=replicated)

    def in_context(fn):
        @functools.wraps(fn)
        def run(state, batch):
            with jax.set_mesh(mesh), use_rules(rules):
                return fn(state, batch)
        return run

    return in_context(train), in_context(evaluate)
