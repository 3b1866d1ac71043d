"""`train(...)`: the gin-configured entry of `ff-jax train`.

model (preset / from_pretrained / scratch) → DualEncoder → sharded TrainState → resume from the
workdir's newest good checkpoint when there is one → steps with periodic validation and checkpoints.

Nothing is written to the workdir until every check has passed (the run's signature against
run.json, the checkpoint's shapes, the step's memory): a refused run leaves it as it was. A step
whose loss, gradient or updated parameters are not finite stops training before anything of it is
saved (or, with `max_skipped_steps`, is skipped: its update not applied).
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import gin
import jax
import numpy as np
from absl import logging
from flax import nnx

from ff_jax import assets
from ff_jax.files import write_atomic
from ff_jax.data.ranking_metrics import ranking_metrics, top_k
from ff_jax.model import Llama, LlamaConfig, from_pretrained
from ff_jax.model.sharding import batch_shards, create_sharded, logical_axis_rules, make_mesh, state_shardings
from ff_jax.model.tokenizer import byte_tokenizer, load_tokenizer
from ff_jax.model.vocab import grow_vocab
from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train import host_memory
from ff_jax.train.data_source import FeedData, collect_embeddings
from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, Scoring
from ff_jax.train.losses import InfoNCE, l2_normalize, matryoshka_dims
from ff_jax.train.memory import GIB, check_step_fits, compiled_step_memory, device_memory_bytes, peak_rss_bytes
from ff_jax.train.metrics_log import MetricsLog
from ff_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from ff_jax.train.pca import PCA


gin.external_configurable(assets.smollm2_gguf, module="ff_jax.assets")


class IncompatibleWorkdir(ValueError):
    """The workdir holds checkpoints of a run with another model, encoder or loss."""


class NonFiniteTraining(ValueError):
    """A step's loss, gradient or updated parameters were NaN or infinite."""

    label = "non-finite loss"


class ValidationStopped(Exception):
    """A stop signal arrived during validation."""


def _signature(model_config: Optional[LlamaConfig], pretrained, overrides: dict, encoder: EncoderConfig, loss,
               optimizer: OptimizerConfig) -> dict:
    """What a checkpoint's shapes depend on: a resume must agree on all of it."""
    if pretrained:
        model = {"pretrained": str(pretrained), **{k: v for k, v in overrides.items() if k in _SHAPE_FIELDS}}
    elif model_config is not None:
        cfg = model_config.replace(**overrides) if overrides else model_config
        model = {k: getattr(cfg, k) for k in _SHAPE_FIELDS}
    else:
        model = None
    return {"model": model, "encoder": dataclasses.asdict(encoder), "loss": type(loss).__name__,
            "learned": [bool(getattr(loss, "learn_temperature", False)), bool(getattr(loss, "learn_bias", False))],
            "accumulation_steps": optimizer.accumulation_steps}


_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "tie_embeddings", "scan_layers", "lora_rank", "param_dtype")


def check_num_steps(num_steps: int, name: str) -> None:
    """Refuses a step count below 1 by its own name (else the optimiser's warm-up check says it, misleadingly)."""
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1 (the STEPS macro), got {num_steps}")


def check_model_overrides(overrides: Optional[dict]) -> dict:
    """`overrides` as a dict, refusing a field LlamaConfig does not have by name (listing those it has)."""
    overrides = dict(overrides or {})
    fields = [f.name for f in dataclasses.fields(LlamaConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"model_overrides: unknown LlamaConfig field(s) {unknown}; the fields are: "
                         f"{', '.join(fields)}")
    return overrides


def check_workdir(workdir: Path, signature: dict) -> None:
    """Refuses a workdir whose run.json describes a different run (`accept_run` writes it)."""
    path = workdir / "run.json"
    signature = json.loads(json.dumps(signature, default=str))  # compare as JSON (tuples → lists)
    if path.exists():
        old = json.loads(path.read_text())
        diffs = [f"{k}: {old.get(k)!r} in the workdir, {v!r} now" for k, v in signature.items() if old.get(k) != v]
        if diffs:
            raise IncompatibleWorkdir(f"{workdir} holds an incompatible run:\n  " + "\n  ".join(diffs)
                                      + "\nUse a new --workdir, or the gin config that run was started with.")


def accept_run(workdir: Path, signature: dict, config_text: Optional[str]) -> None:
    """Every check passed: run.json (a new run's) and config.gin are written now, each atomically."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "run.json").exists():
        write_atomic(workdir / "run.json", json.dumps(signature, indent=2, default=str))
    if config_text is not None:
        write_atomic(workdir / "config.gin", config_text)


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
    which `ff-jax embed --workdir` reads back).
    """
    if max_skipped_steps < 0:
        raise ValueError(f"train.max_skipped_steps must be >= 0, got {max_skipped_steps}")
    check_num_steps(num_steps, "train.num_steps")
    workdir = Path(workdir)
    rules = logical_axis_rules()
    mesh = mesh_factory()
    if mesh.devices.flat[0].platform == "cpu":  # host memory is the device's: freed step buffers must go back to the OS
        host_memory.keep_large_buffers_mapped()
    overrides = check_model_overrides(model_overrides)
    signature = _signature(model_config, pretrained, overrides, encoder, loss, optimizer)
    check_workdir(workdir, signature)
    model, tokenizer = build_model(data, encoder, loss, model_config, pretrained, overrides, mesh, rules, seed)
    cfg = model.backbone.config

    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, cfg.lora_rank, seed, mesh, rules)
    del model
    num_shards = _local_shards(mesh, rules)
    iterator = data.train_iterator(tokenizer, num_shards)
    ckpt = Checkpointer(workdir / "checkpoints", checkpoint)
    start = 0
    good = ckpt.resume_from(start_over, "--gin.train.start_over")  # failing ones are skipped, saying why
    if good is not None:
        start, state = ckpt.restore(state, shardings, iterator, step=good)

    member_s, item_s = data.segments
    step_cfg = steps.StepConfig(loss, tx, member_s, item_s, learning_rate_schedule(optimizer),
                                optimizer.accumulation_steps, skip_nonfinite=max_skipped_steps > 0)
    first = next(iterator)
    batch_sharding = steps.batch_shardings(first, mesh, rules)
    train_step, eval_step = steps.jit_steps(graphdef, step_cfg, shardings, batch_sharding, mesh, rules)
    step_memory = compiled_step_memory(train_step.__wrapped__, (state, steps.device_batch(first, batch_sharding)),
                                       mesh, rules)
    limit = int(memory_limit_gb * GIB) if memory_limit_gb else device_memory_bytes(mesh)
    check_step_fits(step_memory, limit)
    host_memory.release_free_memory()  # what compiling left on the heaps
    accept_run(workdir, signature, config_text)
    ckpt.prepare_to_write()
    ckpt.signals.install()

    validation = data.validation(tokenizer, num_shards * jax.process_count()) if eval_every >= 0 else None
    validator = Validator(graphdef, step_cfg, eval_step, shardings, mesh, rules, recall_ks, pca_dims,
                          should_stop=ckpt.signals.requested)
    log = MetricsLog(workdir, num_steps, start, tensorboard=tensorboard, progress=progress)
    last: dict = {"train": {}, "validation": {}}
    step, batch, skipped, stopped, finished = start, first, 0, False, False
    try:
        # A stop is acted on only after a step, where the data iterator's position matches the
        # state: one that arrives while the next batch is read runs that step, then saves it.
        while step < num_steps:
            state, metrics = train_step(state, steps.device_batch(batch, batch_sharding))
            step += 1
            last["train"] = log.log(step, metrics)
            if not last["train"]["finite"]:
                skipped += 1
                if skipped > max_skipped_steps:
                    raise _non_finite(step, last["train"], skipped, max_skipped_steps, ckpt)
                logging.warning("step %d: loss %s, gradient norm %s: its update was skipped (%d of at most %d)",
                                step, last["train"]["loss"], last["train"]["grad_norm"], skipped, max_skipped_steps)
            if step == start + 1 and jax.process_index() == 0:
                write_atomic(workdir / "operative_config.gin", gin.operative_config_str())
            stopped = ckpt.preempted(step)
            saved = ckpt.check_saves(step, state, iterator)  # a failed earlier save is retried with this step
            if not saved and (ckpt.should_save(step) or stopped or step == num_steps):
                saved = ckpt.save(step, state, iterator, force=True)
            if saved:
                host_memory.release_free_memory()  # the save's host copies of the state
            validate = validation is not None and (step == num_steps or (eval_every and step % eval_every == 0))
            if validate and not stopped:
                try:
                    last["validation"] = log.log(step, validator(state, validation), split="validation")
                except ValidationStopped:
                    stopped = True
                    if not saved:
                        ckpt.save(step, state, iterator, force=True)
                log.pause_clock()
            if stopped:
                break
            if step < num_steps:
                batch = next(iterator)
        ckpt.finish(step, state, iterator)
        if stopped or ckpt.signals.name:
            logging.warning("%s: training stopped at step %d; %s. Run the same command to resume",
                            ckpt.signals.name or "preempted", step, ckpt.describe(ckpt.newest_sealed()))
        finished = True
    finally:
        log.close(raise_errors=finished)
        ckpt.close(raise_errors=finished)
    if jax.process_index() == 0:
        _write_memory_report(workdir, step_memory, limit)
    return last


def _non_finite(step: int, values: dict, skipped: int, allowed: int, ckpt: Checkpointer) -> NonFiniteTraining:
    what = f"loss {values['loss']}, gradient norm {values['grad_norm']}"
    if math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"]):
        what += ", and its update made a parameter non-finite"
    skips = f"; {skipped - 1} earlier step(s) skipped, train.max_skipped_steps={allowed}" if allowed else ""
    return NonFiniteTraining(
        f"step {step}: {what}{skips}. Training stopped; nothing of this step was saved and "
        f"{ckpt.describe(ckpt.newest_sealed())}. Lower OptimizerConfig.learning_rate or look at this step's "
        "data; train.max_skipped_steps=N skips up to N such steps")


def _write_memory_report(workdir: Path, step_memory, limit) -> None:
    """memory.json: what XLA planned for one step, the limit it was checked against, the peak RSS."""
    report = {"peak_rss_gib": peak_rss_bytes() / GIB, "limit_gib": None if limit is None else limit / GIB}
    if step_memory is not None:
        report.update({f"step_{k}_gib": v / GIB for k, v in dataclasses.asdict(step_memory).items()},
                      step_total_gib=step_memory.total / GIB)
    (workdir / "memory.json").write_text(json.dumps(report, indent=2))


def _local_shards(mesh, rules) -> int:
    """N this process feeds: the batch axis's mesh size over processes."""
    total = batch_shards(mesh, rules)
    if total % jax.process_count():
        raise ValueError(f"{total} batch shards do not split over {jax.process_count()} processes")
    return total // jax.process_count()


def recall_at_ks(members: np.ndarray, corpus: np.ndarray, targets: Sequence[set], ks: Sequence[int],
                 exclude: Optional[Sequence[set]] = None) -> dict[int, float]:
    """{k: recall@k} of corpus positions ranked by dot product, through `top_k` and `ranking_metrics`
    (ff_jax.data.ranking_metrics), the code ff_jax.retrieval's test reports use. Members without a
    target are left out; a k beyond the corpus counts the whole corpus. exclude: positions not to
    rank per member (its engaged history, as the evaluation protocol says)."""
    keep = [i for i, t in enumerate(targets) if t]
    if not keep:
        return {k: 0.0 for k in ks}
    excluded = [sorted(exclude[i]) if exclude is not None else [] for i in keep]
    ranked = top_k(members[keep] @ corpus.T, excluded, max(ks))
    cut = {k: min(k, ranked.shape[1]) for k in ks}
    figures = ranking_metrics(ranked, [targets[i] for i in keep], sorted(set(cut.values())))["all"]
    return {k: figures[f"recall@{c}"] for k, c in cut.items()}


class Validator:
    """Loss and in-batch accuracy on validation pairs; recall@K over the corpus at the full size,
    the nested Matryoshka sizes and PCA sizes. Compiled once per run."""

    def __init__(self, graphdef, step_cfg, eval_step, shardings, mesh, rules, recall_ks=(10,), pca_dims=(),
                 should_stop: Callable[[], bool] = lambda: False):
        self.eval_step, self.mesh, self.rules = eval_step, mesh, rules
        self.should_stop = should_stop  # checked before each batch: raises ValidationStopped
        self.recall_ks, self.pca_dims = tuple(recall_ks), tuple(pca_dims)
        self.embed_members = steps.jit_embed(graphdef, step_cfg.member_segments, shardings, mesh, rules)
        self.embed_items = (self.embed_members if step_cfg.item_segments == step_cfg.member_segments  # one compile
                            else steps.jit_embed(graphdef, step_cfg.item_segments, shardings, mesh, rules))

    def _check_stop(self) -> None:
        if self.should_stop():
            raise ValidationStopped()

    def _embed(self, fn, state, batches):
        sharding = steps.batch_shardings(batches[0], self.mesh, self.rules)

        def embed(batch):
            self._check_stop()
            return fn(state, steps.device_batch(batch, sharding, process_local=False))

        return collect_embeddings(embed, batches)

    def __call__(self, state, validation) -> dict:
        out: dict = {}
        if validation.pair_batches:
            sharding = steps.batch_shardings(validation.pair_batches[0], self.mesh, self.rules)
            totals, weight = {"loss": 0.0, "in_batch_accuracy": 0.0}, 0.0
            for batch in validation.pair_batches:
                self._check_stop()
                metrics = self.eval_step(state, steps.device_batch(batch, sharding, process_local=False))
                n = float(np.sum(batch.example_mask))
                for key in totals:
                    totals[key] += float(metrics[key]) * n
                weight += n
            out.update({k: v / max(weight, 1.0) for k, v in totals.items()})
        member_ids, members = self._embed(self.embed_members, state, validation.member_batches)
        item_ids, items = self._embed(self.embed_items, state, validation.corpus_batches)
        index = {item: i for i, item in enumerate(item_ids)}
        targets = [{index[t] for t in validation.targets[m] if t in index} for m in member_ids]
        exclude = [{index[t] for t in validation.exclude[m] if t in index} for m in member_ids]
        views = {"": (None, None)}
        for dim in matryoshka_dims(members.shape[1])[1:]:
            views[f"/dim{dim}"] = (dim, None)
        if self.pca_dims:  # one SVD; smaller fits are its leading components
            widest = PCA.fit(items, max(self.pca_dims))
            for dim in self.pca_dims:
                views[f"/pca{dim}"] = (None, widest.truncated(dim))
        for suffix, (dim, pca) in views.items():
            if pca is not None:
                m, c = pca.transform(members), pca.transform(items)
            else:
                m, c = (np.asarray(l2_normalize(x[:, :dim] if dim else x)) for x in (members, items))
            for k, recall in recall_at_ks(m, c, targets, self.recall_ks, exclude).items():
                out[f"recall@{k}{suffix}"] = recall
        out["random_recall@10"] = 10.0 / max(len(item_ids), 1)
        return out
