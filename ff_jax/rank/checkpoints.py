"""Which kind of run a workdir holds, and restoring its newest weights into a model.

A training run's run.json names its kind: "ranker" for ff_jax.rank.train, and no kind (older
runs) or "dual_encoder" for the dual encoder. Loading a workdir of the other kind is refused
with an error naming both, before any array is read.
"""

import json
from pathlib import Path

from flax import nnx

from ff_jax.train import step as steps
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer

RANKER = "ranker"
DUAL_ENCODER = "dual_encoder"


class WrongCheckpointKind(ValueError):
    """A workdir holds another kind of model than the one asked for."""


def run_kind(workdir: Path) -> str | None:
    """"ranker" or "dual_encoder" from the workdir's run.json; None when there is none."""
    path = Path(workdir) / "run.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("kind", DUAL_ENCODER)


def check_kind(workdir: Path, expected: str, allow_new: bool = False) -> None:
    kind = run_kind(workdir)
    if kind is None and allow_new:
        return
    if kind is None:
        raise FileNotFoundError(f"{workdir}: no run.json (not a training run's workdir; expected a {expected})")
    if kind != expected:
        raise WrongCheckpointKind(f"{workdir} holds a {kind.replace('_', ' ')} run, not a {expected.replace('_', ' ')}"
                                  + (" (give the ranker's own workdir)" if expected == RANKER else
                                     " (embed, init_from and a retriever take a dual-encoder workdir)"))


def restore_weights(workdir: Path, model, expected: str, step: int | None = None, part: str | None = None):
    """`model` with the params of the newest (or `step`) checkpoint of `workdir`, a run of kind
    `expected`; the optimiser state is neither allocated nor read. part: restore only this
    submodule (e.g. "backbone": a dual encoder's heads and temperature stay as they are)."""
    check_kind(workdir, expected)
    graphdef, params, frozen = steps.split_model(model, model.backbone.config.lora_rank)
    fields = {"params": params, "frozen": frozen}
    if part is not None:
        fields = {name: nnx.State({part: state[part]} if part in state else {}) for name, state in fields.items()}
    ckpt = Checkpointer(workdir / "checkpoints", CheckpointConfig(async_save=False))
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{workdir / 'checkpoints'}: no checkpoint; train first")
        _, weights = ckpt.restore_fields(fields, step=step)
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, params, frozen)
    nnx.update(model, weights["params"], weights["frozen"])
    return model
