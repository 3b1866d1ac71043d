"""`train_ranker(...)`: the gin-configured entry of `ff-jax rank-train`.

The dual encoder's machinery, reused rather than copied: the backbone is built as for the dual
encoder (ff_jax.train.loop.build_model: preset, pretrained checkpoint, prompt markers, vocabulary
growth, params born sharded), optionally initialised from a dual-encoder run (`init_from`), then
wrapped in a CrossEncoder. Steps are ff_jax.train.step's (the ranker plugs in through
StepConfig.objective), checkpoints are the same orbax Checkpointer with the grain iterator state
(exact resume, SIGTERM saves), metrics the same MetricsLog (metrics.jsonl, TensorBoard), LoRA the
same trainable filter (the ranker's linear head is a HeadParam: trained under LoRA too).

The training loop is ff_jax.train.trainer.fit, the dual encoder's own; what is the ranker's here is
its model, its objective and its run signature (ff_jax.train.run.RunSpec, kind "ranker": a ranker
workdir is refused where a dual encoder is expected and the reverse).
"""

import functools
from pathlib import Path
from typing import Callable, Optional

import gin
import jax
from flax import nnx

from ff_jax.model import LlamaConfig
from ff_jax.model.sharding import logical_axis_rules, make_mesh, state_shardings
from ff_jax.rank.checkpoints import restore_weights
from ff_jax.rank.cross_encoder import CrossEncoder
from ff_jax.rank.data import RankerData
from ff_jax.rank.losses import ListwiseSoftmax
from ff_jax.train import loop
from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig
from ff_jax.train.dual_encoder import EncoderConfig
from ff_jax.train.losses import InfoNCE
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ff_jax.train.run import DUAL_ENCODER, RANKER, Run, RunSpec, dual_encoder_model, entry_point
from ff_jax.train.trainer import FitSettings, fit, local_shards


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


@entry_point(RANKER)
@gin.configurable(denylist=["workdir", "config_text"])
def train_ranker(workdir: str, config_text: Optional[str] = None, data: RankerData = gin.REQUIRED,
                 model_config: Optional[LlamaConfig] = None,
                 pretrained: Optional[str] = None, model_overrides: Optional[dict] = None,
                 init_from: Optional[str] = None, loss: Callable = ListwiseSoftmax(),
                 optimizer: OptimizerConfig = OptimizerConfig(), checkpoint: CheckpointConfig = CheckpointConfig(),
                 mesh_factory: Callable = make_mesh, num_steps: int = 1000, seed: int = 0, tensorboard: bool = True,
                 progress: bool = True, memory_limit_gb: Optional[float] = None, max_skipped_steps: int = 0,
                 start_over: bool = False) -> dict:
    """Trains a cross-encoder ranker into `workdir`; returns the last logged train metrics.

    config_text: the parsed gin config, written to `workdir/config.gin` once the workdir is
    accepted. init_from: a dual-encoder workdir whose newest checkpoint's backbone starts the ranker (its
    model settings must match). model_config / pretrained / model_overrides default to what the
    gin config binds to `train` (RunSpec.from_gin), so the model files of configs/model/ serve both.
    The rest as for ff_jax.train.loop.train (start_over and max_skipped_steps included).
    """
    settings = FitSettings("train_ranker", num_steps, checkpoint, start_over, max_skipped_steps, memory_limit_gb,
                           tensorboard, progress)
    bound = dual_encoder_model()  # the model where none is passed
    spec = RunSpec(RANKER, data, model_config if model_config is not None else bound["model_config"],
                   pretrained if pretrained is not None else bound["pretrained"],
                   model_overrides if model_overrides is not None else bound["model_overrides"],
                   loss=loss, seed=seed, optimizer=optimizer, mesh_factory=mesh_factory, init_from=init_from)
    rules, mesh = logical_axis_rules(), mesh_factory()
    run = Run.create(workdir, spec)
    model, tokenizer = build_ranker(data, spec.model_config, spec.pretrained, spec.model_overrides, init_from, mesh,
                                    rules, seed)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, model.backbone.config.lora_rank, seed, mesh, rules)
    del model
    iterator = data.train_iterator(tokenizer, local_shards(mesh, rules), seed)
    step_cfg = steps.StepConfig(loss, tx, 1, 1, learning_rate_schedule(optimizer), optimizer.accumulation_steps,
                                objective=functools.partial(objective, loss), skip_nonfinite=max_skipped_steps > 0)
    last = fit(run, settings, graphdef, state, shardings, step_cfg, iterator, mesh, rules, config_text)
    return {"train": last["train"]}
