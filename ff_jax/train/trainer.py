"""`fit`: the one training loop, for the dual encoder (ff_jax.train.loop) and the ranker
(ff_jax.rank.train) alike.

Given a run, a sharded train state and a step configuration, it resumes from the run's newest
good checkpoint, compiles the step, checks that it fits in memory, and only then accepts the run
(run.json, config.gin). Then it steps: metrics logged each step, the non-finite guard, checkpoints
on schedule and on a stop signal (SIGTERM, preemption), and the hooks (validation) when due.

A stop is acted on only after a step, where the data iterator's position matches the state: one
that arrives while the next batch is read runs that step, then saves it. A step whose loss,
gradient or updated parameters are not finite stops training before anything of it is saved (or,
with `max_skipped_steps`, is skipped: its update not applied).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Optional, Sequence

import gin
import jax
from absl import logging

from ff_jax.files import write_atomic
from ff_jax.model.sharding import batch_shards
from ff_jax.train import host_memory
from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train.memory import GIB, check_step_fits, compiled_step_memory, device_memory_bytes, peak_rss_bytes
from ff_jax.train.metrics_log import MetricsLog
from ff_jax.train.run import Run
from ff_jax.train.validation import ValidationStopped


class NonFiniteTraining(ValueError):
    """A step's loss, gradient or updated parameters were NaN or infinite."""

    label = "non-finite loss"


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How long and how carefully to train. entry: the gin name of the training function, for
    the flags an error names (`--gin.<entry>.start_over`)."""

    entry: str
    num_steps: int
    checkpoint: CheckpointConfig = CheckpointConfig()
    start_over: bool = False
    max_skipped_steps: int = 0
    memory_limit_gb: Optional[float] = None
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        check_num_steps(self.num_steps, f"{self.entry}.num_steps")
        if self.max_skipped_steps < 0:
            raise ValueError(f"{self.entry}.max_skipped_steps must be >= 0, got {self.max_skipped_steps}")


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What a hook is built from once the steps are compiled."""

    graphdef: object
    step_cfg: steps.StepConfig
    eval_step: Callable
    shardings: object
    mesh: object
    rules: object
    should_stop: Callable[[], bool]  # a stop signal has arrived


@dataclasses.dataclass
class Hook:
    """Runs `fn(state) -> metrics` every `every` steps and at the last one (every=0: only the
    last), logged under `split`. The fit makes it from the compiled steps: `make(Compiled)`."""

    split: str
    every: int
    make: Callable[[Compiled], Callable]

    def due(self, step: int, num_steps: int) -> bool:
        return step == num_steps or bool(self.every and step % self.every == 0)


def check_num_steps(num_steps: int, name: str) -> None:
    """Refuses a step count below 1 by its own name (else the optimiser's warm-up check says it, misleadingly)."""
    if num_steps < 1:
        raise ValueError(f"{name} must be >= 1 (the STEPS macro), got {num_steps}")


def local_shards(mesh, rules) -> int:
    """N this process feeds: the batch axis's mesh size over processes."""
    total = batch_shards(mesh, rules)
    if total % jax.process_count():
        raise ValueError(f"{total} batch shards do not split over {jax.process_count()} processes")
    return total // jax.process_count()


def fit(run: Run, settings: FitSettings, graphdef, state, shardings, step_cfg: steps.StepConfig, iterator, mesh,
        rules, config_text: Optional[str], hooks: Sequence[Hook] = ()) -> dict:
    """Trains `state` to `settings.num_steps`; returns the last logged metrics, {split: {...}}."""
    ckpt = Checkpointer(run.layout.checkpoints, settings.checkpoint)
    start = 0
    good = ckpt.resume_from(settings.start_over, f"--gin.{settings.entry}.start_over")  # says why it skips any
    if good is not None:
        start, state = ckpt.restore(state, shardings, iterator, step=good)
    first = next(iterator)
    batch_sharding = steps.batch_shardings(first, mesh, rules)
    train_step, eval_step = steps.jit_steps(graphdef, step_cfg, shardings, batch_sharding, mesh, rules)
    step_memory = compiled_step_memory(train_step.__wrapped__, (state, steps.device_batch(first, batch_sharding)),
                                       mesh, rules)
    limit = int(settings.memory_limit_gb * GIB) if settings.memory_limit_gb else device_memory_bytes(mesh)
    check_step_fits(step_memory, limit)
    host_memory.release_free_memory()  # what compiling left on the heaps
    run.accept(config_text)
    ckpt.prepare_to_write()
    ckpt.signals.install()

    compiled = Compiled(graphdef, step_cfg, eval_step, shardings, mesh, rules, should_stop=ckpt.signals.requested)
    running = [(hook, hook.make(compiled)) for hook in hooks]
    num_steps, allowed = settings.num_steps, settings.max_skipped_steps
    log = MetricsLog(run.workdir, num_steps, start, tensorboard=settings.tensorboard, progress=settings.progress)
    last: dict = {"train": {}, **{hook.split: {} for hook in hooks}}
    step, batch, skipped, stopped, finished = start, first, 0, False, False
    try:
        while step < num_steps:
            state, metrics = train_step(state, steps.device_batch(batch, batch_sharding))
            step += 1
            last["train"] = log.log(step, metrics)
            if not last["train"]["finite"]:
                skipped += 1
                if skipped > allowed:
                    raise _non_finite(step, last["train"], skipped, settings, ckpt)
                logging.warning("step %d: loss %s, gradient norm %s: its update was skipped (%d of at most %d)",
                                step, last["train"]["loss"], last["train"]["grad_norm"], skipped, allowed)
            if step == start + 1 and jax.process_index() == 0:
                write_atomic(run.layout.operative_config_gin, gin.operative_config_str())
            stopped = ckpt.preempted(step)
            saved = ckpt.check_saves(step, state, iterator)  # a failed earlier save is retried with this step
            if not saved and (ckpt.should_save(step) or stopped or step == num_steps):
                saved = ckpt.save(step, state, iterator, force=True)
            if saved:
                host_memory.release_free_memory()  # the save's host copies of the state
            for hook, fn in running:
                if stopped or not hook.due(step, num_steps):
                    continue
                try:
                    last[hook.split] = log.log(step, fn(state), split=hook.split)
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
        _write_memory_report(run, step_memory, limit)
    return last


def _non_finite(step: int, values: dict, skipped: int, settings: FitSettings, ckpt: Checkpointer) -> NonFiniteTraining:
    what = f"loss {values['loss']}, gradient norm {values['grad_norm']}"
    if math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"]):
        what += ", and its update made a parameter non-finite"
    allowed = settings.max_skipped_steps
    skips = f"; {skipped - 1} earlier step(s) skipped, {settings.entry}.max_skipped_steps={allowed}" if allowed else ""
    return NonFiniteTraining(
        f"step {step}: {what}{skips}. Training stopped; nothing of this step was saved and "
        f"{ckpt.describe(ckpt.newest_sealed())}. Lower OptimizerConfig.learning_rate or look at this step's "
        f"data; {settings.entry}.max_skipped_steps=N skips up to N such steps")


def _write_memory_report(run: Run, step_memory, limit) -> None:
    """memory.json: what XLA planned for one step, the limit it was checked against, the peak RSS."""
    report = {"peak_rss_gib": peak_rss_bytes() / GIB, "limit_gib": None if limit is None else limit / GIB}
    if step_memory is not None:
        report.update({f"step_{k}_gib": v / GIB for k, v in dataclasses.asdict(step_memory).items()},
                      step_total_gib=step_memory.total / GIB)
    run.layout.memory_report.write_text(json.dumps(report, indent=2))
