"""`train(...)`: the gin-configured entry of `ff-jax train`, and `build_model`, which the ranker,
`ff-jax embed` and export share.

model (preset / from_pretrained / scratch) → DualEncoder → sharded TrainState → the one training
loop (ff_jax.train.trainer.fit) with periodic validation (ff_jax.train.validation) as its hook.
Nothing is written to the workdir until every check has passed (ff_jax.train.run.Run.create and
`fit`): a refused run leaves it as it was.
"""

from typing import Callable, Optional, Sequence

import gin
import jax
from flax import nnx

from ff_jax import assets
from ff_jax.data.feed_data import FeedData
from ff_jax.model import Llama, LlamaConfig, from_pretrained
from ff_jax.model.sharding import create_sharded, logical_axis_rules, make_mesh, state_shardings
from ff_jax.model.tokenizer import byte_tokenizer, load_tokenizer
from ff_jax.model.vocab import grow_vocab
from ff_jax.train import host_memory
from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig
from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, Scoring
from ff_jax.train.losses import InfoNCE
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ff_jax.train.run import DUAL_ENCODER, Run, RunSpec, entry_point
from ff_jax.train.trainer import Compiled, FitSettings, Hook, fit, local_shards
from ff_jax.train.validation import Validator


gin.external_configurable(assets.smollm2_gguf, module="ff_jax.assets")


def _tokenizer(data: FeedData, pretrained_tokenizer):
    if data.tokenizer == "byte":
        return byte_tokenizer()
    if data.tokenizer == "checkpoint":
        if pretrained_tokenizer is None:
            raise ValueError("FeedData.tokenizer='checkpoint' needs train.pretrained (a checkpoint with a "
                             "tokenizer); set FeedData.tokenizer to 'byte' or a tokenizer path")
        return pretrained_tokenizer
    return load_tokenizer(data.tokenizer)


def build_model(data: FeedData, encoder: EncoderConfig, loss, model_config: Optional[LlamaConfig],
                pretrained: Optional[str], overrides: dict, mesh, rules, seed: int):
    """(DualEncoder with params born sharded, tokenizer with the prompt markers added)."""
    markers = list(data.prompt_format().markers)
    if pretrained:
        backbone, checkpoint_tokenizer = from_pretrained(pretrained, mesh=mesh, rules=rules, **overrides)
        tokenizer = _tokenizer(data, checkpoint_tokenizer)
        tokenizer.add_special_tokens(markers)
        if backbone.config.vocab_size < tokenizer.vocab_size:
            backbone = grow_vocab(backbone, tokenizer.vocab_size)  # rows for the prompt markers
        with jax.set_mesh(mesh):
            model = DualEncoder(backbone, encoder, Scoring.for_loss(loss), rngs=nnx.Rngs(seed + 1))
            state = nnx.state(model)
            nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
        return model, tokenizer
    if model_config is None:
        raise ValueError("train needs a model: bind train.model_config (e.g. @tiny()) or train.pretrained")
    tokenizer = _tokenizer(data, None)
    tokenizer.add_special_tokens(markers)
    cfg = model_config.replace(**overrides) if overrides else model_config
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size ({cfg.vocab_size}) is smaller than the tokenizer's "
                         f"({tokenizer.vocab_size}, prompt markers included): raise it in the model config")
    model = create_sharded(lambda: DualEncoder(Llama(cfg, rngs=nnx.Rngs(seed)), encoder, Scoring.for_loss(loss),
                                               rngs=nnx.Rngs(seed + 1)), mesh, rules)
    return model, tokenizer


@entry_point(DUAL_ENCODER)
@gin.configurable(denylist=["workdir", "config_text"])
def train(workdir: str, data: FeedData = gin.REQUIRED, model_config: Optional[LlamaConfig] = None,
          pretrained: Optional[str] = None, model_overrides: Optional[dict] = None,
          encoder: EncoderConfig = EncoderConfig(), loss: Callable = InfoNCE(),
          optimizer: OptimizerConfig = OptimizerConfig(), checkpoint: CheckpointConfig = CheckpointConfig(),
          mesh_factory: Callable = make_mesh, num_steps: int = 1000, seed: int = 0, eval_every: int = 0,
          recall_ks: Sequence[int] = (10, 50), pca_dims: Sequence[int] = (), tensorboard: bool = True,
          progress: bool = True, memory_limit_gb: Optional[float] = None, max_skipped_steps: int = 0,
          start_over: bool = False, config_text: Optional[str] = None) -> dict:
    """Trains a dual encoder into `workdir`; returns the last logged metrics as
    {"train": {...}, "validation": {...}}.

    pretrained: an HF directory or .gguf file (from_pretrained); else `model_config` is built
    from scratch. model_overrides: LlamaConfig fields for either (dtype="bfloat16", remat=True,
    lora_rank=16, ...). eval_every: validation period in steps (0: only at the end).
    memory_limit_gb: refuse a step XLA says needs more than this per device (default: the device's
    memory; for CPU devices, the host's physical memory shared among them).
    max_skipped_steps: how many steps with a non-finite loss, gradient or update may be skipped (their
    update not applied) before training stops; 0: the first one stops it. None is ever saved.
    start_over: when the workdir has checkpoints and none verifies, train from step 0 (they are
    moved to checkpoints.rejected/) instead of refusing.
    config_text: written to workdir/config.gin once every check has passed (the CLI's gin config,
    which `Run.open` reads back).
    """
    settings = FitSettings("train", num_steps, checkpoint, start_over, max_skipped_steps, memory_limit_gb,
                           tensorboard, progress)
    spec = RunSpec(DUAL_ENCODER, data, model_config, pretrained, model_overrides, encoder, loss, seed, optimizer,
                   mesh_factory)
    rules = logical_axis_rules()
    mesh = mesh_factory()
    if mesh.devices.flat[0].platform == "cpu":  # host memory is the device's: freed step buffers must go back to the OS
        host_memory.keep_large_buffers_mapped()
    run = Run.create(workdir, spec)
    model, tokenizer = build_model(data, encoder, loss, model_config, pretrained, spec.model_overrides, mesh, rules,
                                   seed)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, model.backbone.config.lora_rank, seed, mesh, rules)
    del model
    num_shards = local_shards(mesh, rules)
    iterator = data.train_iterator(tokenizer, num_shards)
    member_s, item_s = data.segments
    step_cfg = steps.StepConfig(loss, tx, member_s, item_s, learning_rate_schedule(optimizer),
                                optimizer.accumulation_steps, skip_nonfinite=max_skipped_steps > 0)
    hooks = []
    if eval_every >= 0:
        validation = data.validation(tokenizer, num_shards * jax.process_count())
        if validation is not None:
            hooks.append(Hook("validation", eval_every, lambda c: _validate(c, validation, recall_ks, pca_dims)))
    return fit(run, settings, graphdef, state, shardings, step_cfg, iterator, mesh, rules, config_text, hooks)


def _validate(compiled: Compiled, validation, recall_ks, pca_dims):
    validator = Validator(compiled.graphdef, compiled.step_cfg, compiled.eval_step, compiled.shardings,
                          compiled.mesh, compiled.rules, recall_ks, pca_dims, should_stop=compiled.should_stop)
    return lambda state: validator(state, validation)
