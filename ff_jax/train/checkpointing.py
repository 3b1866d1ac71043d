"""Checkpoints of a training run: orbax CheckpointManager over the workdir.

What a checkpoint holds, so a resumed run continues the loss curve exactly:
  state — the whole TrainState (params, frozen params, optimiser state, step, RNG), saved as a flat
          dict of arrays (path → array) so orbax never has to understand NNX or optax types;
  data  — the grain iterator state, one JSON file per process (grain's own orbax handler), taken
          after the batch of the checkpoint's step was consumed.
Saves are asynchronous (training continues while arrays are written); every `save_every` steps,
keeping the newest `keep`. SIGTERM (preemption) sets a flag the loop checks after each step; it
then saves that step, waits for the write, and exits.
"""

import dataclasses
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import gin
import grain
import jax
import orbax.checkpoint as ocp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    save_every: int = 500
    keep: int = 3
    async_save: bool = True


def _flatten(tree) -> tuple[dict, Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat = {}
    for path, leaf in leaves:
        key = "/".join(_key_name(k) for k in path)
        if key in flat:
            raise ValueError(f"two train-state leaves share the checkpoint key {key!r}")
        flat[key] = leaf
    return flat, treedef


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


class Checkpointer:
    """Save / restore a TrainState and the data iterator under `directory`."""

    def __init__(self, directory: str | Path, config: CheckpointConfig = CheckpointConfig()):
        self.config = config
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, save_interval_steps=config.save_every,
                                               enable_async_checkpointing=config.async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._preempted = threading.Event()
        self._previous_handler = None

    # -------------------------------------------------------------- saving

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Starts an (async) save of `state` as of `step`; True when a save was started."""
        flat, _ = _flatten(state)
        items = {"state": ocp.args.StandardSave(flat)}
        if data_iterator is not None:
            # Written synchronously by grain's handler, so it is the state at `step`.
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        self.uninstall_sigterm()

    # -------------------------------------------------------------- restoring

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, state_template, shardings, data_iterator=None, step: Optional[int] = None):
        """The TrainState saved at `step` (default: latest), laid out with `shardings`; the data
        iterator (when given) is moved to where it was. Returns (step, state)."""
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                state_template, shardings)
        return self._restore(abstract, data_iterator, step)

    def restore_fields(self, fields: dict, step: Optional[int] = None):
        """Only some TrainState fields, e.g. {"params": ..., "frozen": ...} for inference: the
        optimiser state (twice the weights, with Adam) is neither allocated nor read. Each array is
        restored with the shape, dtype and sharding of the one given. Returns (step, fields)."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), fields)
        return self._restore(abstract, None, step, partial=True)

    def _restore(self, abstract, data_iterator, step: Optional[int], partial: bool = False):
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        flat_abstract, treedef = _flatten(abstract)
        if partial:  # the leaves named, the rest of the checkpoint left on disk
            items = {"state": ocp.args.PyTreeRestore(
                flat_abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(flat_abstract),
                partial_restore=True)}
        else:
            items = {"state": ocp.args.StandardRestore(flat_abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as err:
            raise ValueError(f"{self.directory}: checkpoint {step} does not match this run's model / optimiser "
                             f"({err}); use a fresh --workdir or the gin config the run was started with") from err
        flat = restored["state"]
        missing = set(flat_abstract) - set(flat)
        if missing:
            raise ValueError(f"{self.directory}: checkpoint {step} lacks {sorted(missing)[:3]}...")
        return step, jax.tree_util.tree_unflatten(treedef, [flat[k] for k in flat_abstract])

    # -------------------------------------------------------------- preemption

    def install_sigterm(self) -> None:
        """SIGTERM → `preempted()` becomes true; the loop saves and stops at the next step."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        if jax.process_count() > 1:
            return  # jax.distributed's preemption notifier owns SIGTERM; see `preempted`
        self._previous_handler = signal.signal(signal.SIGTERM, lambda *_: self._preempted.set())

    def uninstall_sigterm(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def preempted(self, step: int) -> bool:
        """True on SIGTERM here, or (multi-host) when jax's preemption service says so."""
        if self._preempted.is_set():
            return True
        return jax.process_count() > 1 and self.manager.reached_preemption(step)
