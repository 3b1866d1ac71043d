"""Pure, jitted train and eval steps over a (data, fsdp, tensor) mesh.

The model travels as (graphdef, state): `graphdef` is static, the state is a plain pytree, so each
step is one `jax.jit` with explicit in/out shardings — the modern spelling of pjit — and the same
code runs on one CPU, 8 forced CPU devices, a GPU, or many hosts under jax.distributed.

Batches keep CONTRACTS.md's leading shard axis N, sharded over the logical "batch" axis (data and
fsdp). The losses see global arrays, so XLA inserts the cross-device all-gather of in-batch
negatives itself.
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


def batch_shardings(batch: dict, mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> dict:
    """The shard axis N of every array over the logical "batch" axis; host-side lists are dropped."""
    out, size = {}, batch_shards(mesh, rules)
    for key, value in batch.items():
        if isinstance(value, list):
            continue
        shape = np.shape(value)
        spec = logical_to_spec(("batch",) + (None,) * (len(shape) - 1), dict(mesh.shape), rules)
        if shape[0] % size:
            raise ValueError(f"batch[{key!r}] has {shape[0]} shards on its leading axis; the mesh splits the batch "
                             f"{size} ways ({spec[0]}): make the pipeline's num_shards a multiple of {size}")
        out[key] = NamedSharding(mesh, spec)
    return out


def device_batch(batch: dict, shardings: dict, process_local: bool = True) -> dict:
    """Host numpy batch → global jax arrays.

    With several processes, a process-local batch holds only this process's shards (the training
    pipeline reads one slice of the records per process); a global one (process_local=False, e.g.
    validation batches every process builds whole) is cut to each process's devices here.
    """
    if jax.process_count() == 1:
        return {key: jax.device_put(np.asarray(batch[key]), sharding) for key, sharding in shardings.items()}
    if process_local:
        return {key: jax.make_array_from_process_local_data(sharding, np.asarray(batch[key]))
                for key, sharding in shardings.items()}
    return {key: jax.make_array_from_callback(np.shape(batch[key]), sharding,
                                              lambda index, value=np.asarray(batch[key]): value[index])
            for key, sharding in shardings.items()}


def _tokens(batch: dict) -> jax.Array:
    return sum(jnp.sum(batch[k] > 0) for k in ("member_segment_ids", "item_segment_ids"))


def _loss_and_metrics(graphdef, cfg: StepConfig, params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    towers = model.towers(batch, cfg.member_segments, cfg.item_segments)
    loss, metrics = cfg.loss(towers, model.scoring.log_scale[...], model.scoring.bias[...])
    return loss, (metrics, towers)


def train_step(graphdef, cfg: StepConfig, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimiser step (or one accumulation micro-step): a pure function of its arguments."""
    grad_fn = jax.value_and_grad(functools.partial(_loss_and_metrics, graphdef, cfg), has_aux=True)
    (loss, (metrics, _)), grads = grad_fn(state.params, state.frozen, batch)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   examples=jnp.sum(batch["example_mask"]), tokens=_tokens(batch))
    if cfg.schedule is not None:
        metrics["learning_rate"] = cfg.schedule(state.step // cfg.accumulation_steps)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              rng=jax.random.key_data(rng))
    return new_state, metrics


def eval_step(graphdef, cfg: StepConfig, state: TrainState, batch: dict) -> dict:
    """Loss and metrics of a batch without updating (recall@K embeds the corpus separately)."""
    loss, (metrics, _) = _loss_and_metrics(graphdef, cfg, state.params, state.frozen, batch)
    return dict(metrics, loss=loss)


def embed_step(graphdef, segments: int, state: TrainState, batch: dict) -> jax.Array:
    """Un-normalised embeddings [N * B/N, E] of a one-tower batch (callers slice / normalise)."""
    model = nnx.merge(graphdef, state.params, state.frozen)
    return model.encode(batch["tokens"], batch["segment_ids"], batch["positions"], batch["slot"], segments)


def jit_embed(graphdef, segments: int, shardings: TrainState, mesh, rules=DEFAULT_RULES):
    """Compiled embed step taking (state, device batch); the output is replicated for the host."""
    replicated = NamedSharding(mesh, PartitionSpec())
    fn = jax.jit(functools.partial(embed_step, graphdef, segments), out_shardings=replicated)

    def run(state, batch):
        with jax.set_mesh(mesh), use_rules(rules):
            return fn(state, batch)

    return run


def jit_steps(graphdef, cfg: StepConfig, shardings: TrainState, batch_sharding: dict, mesh, rules=DEFAULT_RULES):
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
