"""Restoring a run's newest weights into a model, refusing a run of the other kind first
(ff_jax.train.run.check_kind) with an error naming both, before any array is read."""

from pathlib import Path

from flax import nnx

from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer
from ff_jax.train.layout import Layout
from ff_jax.train.run import check_kind


def restore_weights(workdir: Path, model, expected: str, step: int | None = None, part: str | None = None):
    """`model` with the params of the newest (or `step`) checkpoint of `workdir`, a run of kind
    `expected`; the optimiser state is neither allocated nor read. part: restore only this
    submodule (e.g. "backbone": a dual encoder's heads and temperature stay as they are)."""
    check_kind(workdir, expected)
    graphdef, params, frozen = steps.split_model(model, model.backbone.config.lora_rank)
    fields = {"params": params, "frozen": frozen}
    if part is not None:
        fields = {name: nnx.State({part: state[part]} if part in state else {}) for name, state in fields.items()}
    ckpt = Checkpointer(Layout(workdir).checkpoints, CheckpointConfig(async_save=False))
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{Layout(workdir).checkpoints}: no checkpoint; train first")
        _, weights = ckpt.restore_fields(fields, step=step)
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, params, frozen)
    nnx.update(model, weights["params"], weights["frozen"])
    return model
