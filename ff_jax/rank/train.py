"""`train_ranker(...)`: the gin-configured entry of `ff-jax rank-train`.

The dual encoder's machinery, reused rather than copied: the backbone is built as for the dual
encoder (ff_jax.train.loop.build_model: preset, pretrained checkpoint, prompt markers, vocabulary
growth, params born sharded), optionally initialised from a dual-encoder run (`init_from`), then
wrapped in a CrossEncoder. Steps are ff_jax.train.step's (the ranker plugs in through
StepConfig.objective), checkpoints are the same orbax Checkpointer with the grain iterator state
(exact resume, SIGTERM saves), metrics the same MetricsLog (metrics.jsonl, TensorBoard), LoRA the
same trainable filter (the ranker's linear head is a HeadParam: trained under LoRA too).

run.json records `"kind": "ranker"`: a ranker workdir is refused where a dual encoder is expected
and the reverse (ff_jax.rank.checkpoints).
"""

import dataclasses
import functools
from pathlib import Path
from typing import Callable, Optional

import gin
import jax
from flax import nnx

from ff_jax import files
from ff_jax.model import LlamaConfig
from ff_jax.model.sharding import logical_axis_rules, make_mesh, state_shardings
from ff_jax.rank.checkpoints import DUAL_ENCODER, RANKER, check_kind, restore_weights
from ff_jax.rank.cross_encoder import CrossEncoder
from ff_jax.rank.data import RankerData
from ff_jax.rank.losses import ListwiseSoftmax
from ff_jax.train import loop
from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train.dual_encoder import EncoderConfig
from ff_jax.train.losses import InfoNCE
from ff_jax.train.memory import GIB, check_step_fits, compiled_step_memory, device_memory_bytes
from ff_jax.train.metrics_log import MetricsLog
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer


def objective(loss: Callable, model: CrossEncoder, batch) -> tuple[jax.Array, dict]:
    """The ranker's loss over a RankerBatch [N, R, ...]: one member per row."""
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [N, R, ...] → [N*R, ...]
    scores = model.row_scores(flat(batch.tokens), flat(batch.segment_ids), flat(batch.positions),
                              flat(batch.prefix_segments), flat(batch.last))
    return loss(scores + flat(batch.prior), flat(batch.labels), flat(batch.candidate_mask), flat(batch.example_mask))


def build_ranker(data: RankerData, model_config: Optional[LlamaConfig], pretrained: Optional[str], overrides: dict,
                 init_from: Optional[str], mesh, rules, seed: int):
    """(CrossEncoder with params born sharded, tokenizer with the prompt markers)."""
    dual, tokenizer = loop.build_model(data.feed, EncoderConfig(), InfoNCE(), model_config, pretrained, overrides,
                                       mesh, rules, seed)
    if init_from:
        dual = restore_weights(Path(init_from), dual, expected=DUAL_ENCODER, part="backbone")
    answer_ids = data.ranker.answer_ids(tokenizer)
    with jax.set_mesh(mesh):
        model = CrossEncoder(dual.backbone, data.ranker.head, answer_ids, rngs=nnx.Rngs(seed + 2))
        state = nnx.state(model)
        nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    return model, tokenizer


def signature(data: RankerData, model_config, pretrained, overrides: dict, init_from, loss, optimizer) -> dict:
    """What a ranker checkpoint's shapes and meaning depend on: a resume must agree on all of it."""
    if pretrained:
        model = {"pretrained": str(pretrained), **overrides}
    else:
        cfg = model_config.replace(**overrides) if overrides and model_config else model_config
        model = None if cfg is None else {k: getattr(cfg, k) for k in loop._SHAPE_FIELDS}
    return {"kind": RANKER, "model": model, "init_from": str(init_from) if init_from else None,
            "ranker": dataclasses.asdict(data.ranker), "candidates": data.candidates,
            "context_budget": data.context_budget, "loss": type(loss).__name__,
            "accumulation_steps": optimizer.accumulation_steps,
            **({"retrieval_prior": data.retrieval_prior} if data.retrieval_prior else {})}


def model_arguments(model_config=None, pretrained=None, model_overrides=None) -> tuple:
    """The model arguments given, else those the gin config binds to the dual encoder's `train`."""
    bound = gin.get_bindings(loop.train)
    return (model_config if model_config is not None else bound.get("model_config"),
            pretrained if pretrained is not None else bound.get("pretrained"),
            model_overrides if model_overrides is not None else bound.get("model_overrides"))


@gin.configurable(denylist=["workdir", "config_text"])
def train_ranker(workdir: str, config_text: Optional[str] = None, data: RankerData = gin.REQUIRED,
                 model_config: Optional[LlamaConfig] = None,
                 pretrained: Optional[str] = None, model_overrides: Optional[dict] = None,
                 init_from: Optional[str] = None, loss: Callable = ListwiseSoftmax(),
                 optimizer: OptimizerConfig = OptimizerConfig(), checkpoint: CheckpointConfig = CheckpointConfig(),
                 mesh_factory: Callable = make_mesh, num_steps: int = 1000, seed: int = 0, tensorboard: bool = True,
                 progress: bool = True, memory_limit_gb: Optional[float] = None, start_over: bool = False) -> dict:
    """Trains a cross-encoder ranker into `workdir`; returns the last logged train metrics.

    config_text: the parsed gin config, written to `workdir/config.gin` once the workdir is
    accepted. init_from: a dual-encoder workdir whose newest checkpoint's backbone starts the ranker (its
    model settings must match). model_config / pretrained / model_overrides default to what the
    gin config binds to `train`, so the model files of configs/model/ serve both. The rest as for
    ff_jax.train.loop.train (start_over included).
    """
    model_config, pretrained, model_overrides = model_arguments(model_config, pretrained, model_overrides)
    loop.check_num_steps(num_steps, "train_ranker.num_steps")
    workdir = Path(workdir)
    check_kind(workdir, RANKER, allow_new=True)
    rules, mesh = logical_axis_rules(), mesh_factory()
    overrides = loop.check_model_overrides(model_overrides)
    run = signature(data, model_config, pretrained, overrides, init_from, loss, optimizer)
    loop.check_workdir(workdir, run)
    model, tokenizer = build_ranker(data, model_config, pretrained, overrides, init_from, mesh, rules, seed)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, model.backbone.config.lora_rank, seed, mesh, rules)
    del model
    iterator = data.train_iterator(tokenizer, loop._local_shards(mesh, rules), seed)
    ckpt = Checkpointer(workdir / "checkpoints", checkpoint)
    start = 0
    good = ckpt.resume_from(start_over, "--gin.train_ranker.start_over")
    if good is not None:
        start, state = ckpt.restore(state, shardings, iterator, step=good)
    step_cfg = steps.StepConfig(loss, tx, 1, 1, learning_rate_schedule(optimizer), optimizer.accumulation_steps,
                                objective=functools.partial(objective, loss))
    first = next(iterator)
    batch_sharding = steps.batch_shardings(first, mesh, rules)
    train_step, _ = steps.jit_steps(graphdef, step_cfg, shardings, batch_sharding, mesh, rules)
    memory = compiled_step_memory(train_step.__wrapped__, (state, steps.device_batch(first, batch_sharding)), mesh,
                                  rules)
    check_step_fits(memory, int(memory_limit_gb * GIB) if memory_limit_gb else device_memory_bytes(mesh))
    loop.accept_run(workdir, run, config_text)
    ckpt.prepare_to_write()
    ckpt.signals.install()
    log = MetricsLog(workdir, num_steps, start, tensorboard=tensorboard, progress=progress)
    last: dict = {}
    step, batch, finished = start, first, False
    try:
        while step < num_steps:  # a stop is acted on after a step, as in ff_jax.train.loop
            state, metrics = train_step(state, steps.device_batch(batch, batch_sharding))
            step += 1
            last = log.log(step, metrics)
            if not last["finite"]:
                raise loop.NonFiniteTraining(f"ranker step {step}: loss {last['loss']}, gradient norm "
                                             f"{last['grad_norm']}; nothing of this step was saved. Lower "
                                             "OptimizerConfig.learning_rate")
            if step == start + 1 and jax.process_index() == 0:
                files.write_atomic(workdir / "operative_config.gin", gin.operative_config_str())
            stopped = ckpt.preempted(step)
            saved = ckpt.check_saves(step, state, iterator)
            if not saved and (ckpt.should_save(step) or stopped or step == num_steps):
                ckpt.save(step, state, iterator, force=True)
            if stopped:
                break
            if step < num_steps:
                batch = next(iterator)
        ckpt.finish(step, state, iterator)
        finished = True
    finally:
        log.close(raise_errors=finished)
        ckpt.close(raise_errors=finished)
    return {"train": last}

