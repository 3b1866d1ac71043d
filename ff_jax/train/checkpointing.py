"""Checkpoints of a training run: orbax CheckpointManager over the workdir, each checkpoint sealed
with a checksum manifest once written and verified before it is restored.

What a checkpoint holds, so a resumed run continues the loss curve exactly:
  state — the whole TrainState (params, frozen params, optimiser state, step, RNG), saved as a flat
          dict of arrays (path → array) so orbax never has to understand NNX or optax types;
  data  — the grain iterator state, one JSON file per process (grain's own orbax handler), taken
          after the batch of the checkpoint's step was consumed.
Saves come every `save_every` steps, asynchronous on accelerators (training continues while arrays
are written) and synchronous on CPU hosts (CheckpointConfig.async_save).

What makes a checkpoint trustworthy (orbax checksums no array data: only the index of a zarr3
shard carries a crc32c, and its default OCDBT layout has none):
  sealed    — once orbax has finished writing step N, checkpoints/N/manifest.json records the size
              and sha256 of every file in it, and a sha256 of its own fields (ff_jax.files). No
              manifest: the save never finished.
  verified  — a restore hashes the files first. The newest checkpoint that fails (a flipped byte, a
              truncated, missing or unlisted file, an edited manifest, no manifest) is skipped,
              saying which and why, and the next newest tried. Training moves skipped ones to
              checkpoints.rejected/ (kept, never deleted), so its new saves cannot collide with them;
              when none verifies it refuses to start over from step 0 unless asked (`resume_from`).
  kept      — an old checkpoint is deleted only after a newer one is sealed, keeping the newest
              `keep` (orbax's max_to_keep deletes them when a save starts, even a save that fails).
  retried   — a failed save (a full disk) is retried once, synchronously, with the state at hand; a
              second failure raises CheckpointSaveError naming the step, the cause and the newest
              sealed checkpoint.
Stopping: `signals` (ff_jax.train.stop_signals) serves a single process; orbax's own preemption
support (`reached_preemption`) rests on jax.distributed's coordination service, so it serves
multi-host runs (where it owns SIGTERM). `preempted` asks both.
"""

import dataclasses
import errno
import json
import logging as std_logging
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import gin
import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ff_jax.files import MANIFEST, check_seal, checksum_names, checksums, sealed, verify, write_manifest
from ff_jax.train.stop_signals import StopSignals


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """async_save: write while training goes on. None (the default) = on accelerators only: on a
    CPU host the asynchronous copy of the state shares RAM with the next step's temporaries
    (SmolLM2-135M: 1.5 GiB more at the process's peak), and two cores gain little from overlap."""

    save_every: int = 500
    keep: int = 3
    async_save: Optional[bool] = None

    def __post_init__(self):
        if self.save_every < 1 or self.keep < 1:
            raise ValueError(f"CheckpointConfig.save_every and keep must be >= 1, got {self.save_every}, {self.keep}")


class CorruptCheckpoint(ValueError):
    """A checkpoint whose files differ from its manifest, or that has no manifest."""

    label = "corrupt checkpoint"


class CheckpointSaveError(OSError):
    """A save failed twice (the second time synchronously, right away)."""

    label = "checkpoint save failed"


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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_SEE_ORBAX_LOG = "(orbax's log says why; ff-jax shows it with --verbosity=1)"


class _OrbaxWriteTracebacks(std_logging.Filter):
    """Orbax logs a failed write from each of its threads, each with a traceback; the Checkpointer
    raises one error carrying the cause, so those records are dropped below debug verbosity."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.levelno >= std_logging.ERROR and record.exc_info and "orbax" in record.pathname
                    and not logging.level_debug())


class _OrbaxUnretrievedTasks(std_logging.Filter):
    """The same failure once more per array, from orbax's asyncio tasks nobody awaited any more."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not ("orbax" in record.getMessage() and not logging.level_debug())


def _quiet_orbax_tracebacks() -> None:
    for name, kind in (("absl", _OrbaxWriteTracebacks), ("asyncio", _OrbaxUnretrievedTasks)):
        logger = std_logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


def _sync(name: str) -> None:
    """A barrier across processes (multi-host: process 0 writes what all of them read next)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"ff_jax.checkpointing.{name}")


def newest_sealed_step(directory: Path) -> Optional[int]:
    """The newest step under a checkpoints folder whose save finished (it has its manifest), read
    from the folder names alone: nothing is hashed or restored."""
    steps = [int(p.name) for p in Path(directory).glob("*") if p.name.isdigit() and (p / MANIFEST).is_file()]
    return max(steps, default=None)


class Checkpointer:
    """Save / restore a TrainState and the data iterator under `directory`."""

    def __init__(self, directory: str | Path, config: CheckpointConfig = CheckpointConfig()):
        self.config = config
        self.directory = Path(directory).absolute()
        self.rejected_directory = self.directory.with_name(self.directory.name + ".rejected")
        self.manager = self._new_manager()
        _quiet_orbax_tracebacks()
        self._unsealed: list[int] = []  # saves started and not yet sealed
        self._verified: set[int] = set()
        self._rejected: dict[int, str] = {}  # step: why, to move aside once the run is accepted
        self.signals = StopSignals()

    def _new_manager(self, remove_temporary: bool = False, synchronous: bool = False) -> ocp.CheckpointManager:
        # create=False: a refused run leaves no checkpoints folder behind; `_start` makes it.
        # remove_temporary: the folders of saves that failed or were killed (only a writer may: a
        # reader's manager, `ff-jax embed`'s, would delete a running save's).
        options = ocp.CheckpointManagerOptions(save_interval_steps=self.config.save_every, create=False,
                                               enable_async_checkpointing=self._async and not synchronous,
                                               cleanup_tmp_directories=remove_temporary)
        return ocp.CheckpointManager(self.directory, options=options)

    @property
    def _async(self) -> bool:
        chosen = self.config.async_save
        return jax.default_backend() != "cpu" if chosen is None else chosen

    def _folder(self, step: int) -> Path:
        return self.directory / str(step)

    # -------------------------------------------------------------- saving

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Starts an (async) save of `state` as of `step`, after the previous save has finished and
        been sealed; True when `step` is being (or was) saved. A failed save is retried once with
        `state`; a second failure raises CheckpointSaveError."""
        if self._settle(step, state, data_iterator):
            return True  # the previous save failed and its retry saved `step`
        try:
            started = self._start(step, state, data_iterator, force)
        except Exception as err:  # noqa: BLE001  (tensorstore, grain and the OS each raise their own)
            self._retry(step, err, step, state, data_iterator)
            return True
        if started and not self._async:
            self._settle(step, state, data_iterator)
        return started

    def check_saves(self, step: int, state, data_iterator=None) -> bool:
        """At a step boundary: seals a save that has finished; one that failed is retried with
        `state` as of `step`. True when that retry saved `step`."""
        if not self._unsealed or self.manager.is_saving_in_progress():
            return False
        return self._settle(step, state, data_iterator)

    def finish(self, step: int, state, data_iterator=None) -> None:
        """Waits for the save in flight and seals it (retrying a failed one with `state`)."""
        self._settle(step, state, data_iterator)

    def newest_sealed(self) -> Optional[int]:
        """The newest checkpoint known whole, after waiting for a save in flight (not retried)."""
        self._finish()
        sealed = [s for s in self.manager.all_steps() if (self._folder(s) / MANIFEST).is_file()]
        return max(sealed, default=None)

    def describe(self, step: Optional[int]) -> str:
        if step is None:
            return "no checkpoint was saved"
        return f"the newest good checkpoint is step {step} ({self._folder(step)})"

    def close(self, raise_errors: bool = True) -> None:
        """Waits for the save in flight and seals it; a failed one raises CheckpointSaveError unless
        `raise_errors` is False (an error is already on its way out)."""
        failed = self._finish()
        if failed is None:
            self.manager.close()
        self.signals.uninstall()
        if failed is not None and raise_errors:
            step, err = failed
            raise CheckpointSaveError(f"{self._folder(step)}: saving checkpoint {step} failed: {_first_line(err)}; "
                                      f"{self.describe(self.newest_sealed())}") from err

    def _start(self, step: int, state, data_iterator, force: bool) -> bool:
        flat, _ = _flatten(state)
        items = {"state": ocp.args.StandardSave(flat)}
        if data_iterator is not None:
            # Written synchronously by grain's handler, so it is the state at `step`.
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if not (force or self.manager.should_save(step)):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_room(step)
        started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if started:
            self._unsealed.append(step)
        return started

    def _check_room(self, step: int) -> None:
        """Refuses a save the disk has no room for (as large as the newest sealed checkpoint) before
        anything is written: a save that runs out of space leaves orbax's threads failing one by one."""
        newest = max((s for s in self.manager.all_steps() if (self._folder(s) / MANIFEST).is_file()), default=None)
        if newest is None:
            return
        needed = sum(json.loads((self._folder(newest) / MANIFEST).read_text())["bytes"].values())
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"no space left for checkpoint {step} under {self.directory}: "
                                        f"{free / 2**20:.1f} MiB free, checkpoint {newest} takes {needed / 2**20:.1f} MiB")

    def _finish(self) -> Optional[tuple[int, BaseException]]:
        """Waits for the save in flight, then seals every finished one; (step, error) of one that failed."""
        if not self._unsealed:
            return None
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001  (the background write's own error, re-raised by orbax)
            return self._unsealed[-1], err
        for step in list(self._unsealed):
            if not self._folder(step).is_dir():  # orbax logged the error and left the temporary folder
                return step, OSError(f"orbax did not finalize {self._folder(step)} {_SEE_ORBAX_LOG}")
            try:
                self._seal(step)
            except OSError as err:
                return step, err
            self._unsealed.remove(step)
        self._delete_old()
        return None

    def _settle(self, step: int, state, data_iterator) -> bool:
        failed = self._finish()
        if failed is None:
            return False
        self._retry(*failed, step, state, data_iterator)
        return True

    def _retry(self, failed: int, err: BaseException, step: int, state, data_iterator) -> None:
        """Saves `state` as of `step` once more, synchronously, with a fresh manager: after a failed
        async save orbax's re-raises that error on every wait; the fresh one removes its temporary
        folder (space, on a full disk)."""
        self._unsealed = []
        self.manager = self._new_manager(remove_temporary=True, synchronous=True)
        try:
            if not self._start(step, state, data_iterator, force=True):
                raise OSError(f"orbax declined to save step {step}")
            if not self._folder(step).is_dir():
                raise OSError(f"orbax did not finalize {self._folder(step)} {_SEE_ORBAX_LOG}")
            self._seal(step)
        except Exception as again:  # noqa: BLE001
            self._unsealed = []
            self.manager = self._new_manager(remove_temporary=True)  # frees what the retry wrote
            raise CheckpointSaveError(
                f"{self._folder(failed)}: saving checkpoint {failed} failed: {_first_line(err)}; saving step {step} "
                f"again failed too: {_first_line(again)}. Training stopped at step {step}; "
                f"{self.describe(self.newest_sealed())}. Fix the cause and run the same command to resume"
            ) from again
        self._unsealed = []
        self.manager = self._new_manager()
        self._delete_old()
        logging.warning("checkpoint %d could not be saved (%s); saved step %d on a second try", failed,
                        _first_line(err), step)

    def _seal(self, step: int) -> None:
        """manifest.json: the size and sha256 of every file of the finished checkpoint `step`."""
        if jax.process_index() == 0:
            folder = self._folder(step)
            digests = checksums(folder)
            write_manifest(folder / MANIFEST, sealed({"step": step, "sha256": digests,
                                                      "bytes": {name: (folder / name).stat().st_size
                                                                for name in digests}}))
            self._verified.add(step)
        _sync(f"sealed.{step}")

    def _delete_old(self) -> None:
        """Steps older than the newest `keep` sealed ones (sealed or not): only now that they are."""
        steps = sorted(self.manager.all_steps())
        sealed = [s for s in steps if (self._folder(s) / MANIFEST).is_file()]
        if len(sealed) > self.config.keep:
            oldest_kept = sealed[-self.config.keep]
            for step in steps:
                if step < oldest_kept:
                    self.manager.delete(step)

    # -------------------------------------------------------------- verifying

    def verify(self, step: int) -> None:
        """Raises CorruptCheckpoint naming the first file of checkpoint `step` that is missing, unlisted,
        or differs in size or sha256 from its manifest (or the manifest itself when it is absent or
        edited)."""
        if step in self._verified:
            return
        folder = self._folder(step)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            digests, sizes = manifest["sha256"], manifest["bytes"]
        except FileNotFoundError as err:
            raise CorruptCheckpoint(f"{folder}: no {MANIFEST}, so its save never finished (or it predates "
                                    "checksummed checkpoints)") from err
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpoint(f"{folder / MANIFEST}: unreadable ({err})") from err
        check_seal(folder / MANIFEST, manifest, CorruptCheckpoint)  # a dropped entry would hide a file from the check
        unlisted = sorted(set(checksum_names(folder)) - set(digests))
        if unlisted:  # orbax would read it unchecked
            raise CorruptCheckpoint(f"{folder / unlisted[0]}: not listed in {MANIFEST} ({len(unlisted)} unlisted "
                                    "file(s)), so it cannot be verified")
        for name, digest in sorted(digests.items()):
            file = folder / name
            if file.is_file() and file.stat().st_size != sizes.get(name):
                raise CorruptCheckpoint(f"{file}: {file.stat().st_size} bytes, {sizes.get(name)} when saved "
                                        "(truncated or overwritten)")
            verify(file, digest, CorruptCheckpoint)
        self._verified.add(step)

    def newest_good(self) -> Optional[int]:
        """The newest checkpoint that verifies (None: none does). Each newer one is skipped, saying
        why; `prepare_to_write` later moves those out of the way of new saves."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.verify(step)
            except CorruptCheckpoint as err:
                logging.warning("checkpoint %d skipped: %s", step, err)
                self._rejected[step] = str(err)
                continue
            if self._rejected:
                logging.warning("using checkpoint %d, the newest that verifies", step)
            return step
        return None

    def resume_from(self, start_over: bool, start_over_flag: str) -> Optional[int]:
        """For a training run: the newest good checkpoint (None: start at step 0). When there are
        checkpoints and none verifies, starting at step 0 would quietly discard the run: that is
        refused, naming `start_over_flag`, unless `start_over` asks for it."""
        good = self.newest_good()
        if good is not None or not self._rejected:
            return good
        newest = max(self._rejected)
        if not start_over:
            raise CorruptCheckpoint(
                f"{self.directory}: none of the {len(self._rejected)} checkpoint(s) verifies (newest, step {newest}: "
                f"{self._rejected[newest]}); nothing was changed. To train from step 0 anyway, run again with "
                f"{start_over_flag}=True (they are then moved to {self.rejected_directory})")
        logging.warning("none of the %d checkpoint(s) under %s verifies: training starts over from step 0 (%s=True)",
                        len(self._rejected), self.directory, start_over_flag)
        return None

    def prepare_to_write(self) -> None:
        """For a run about to save (once it is accepted): moves the checkpoints `newest_good` skipped
        to checkpoints.rejected/<step> with a REJECTED.txt saying why (kept for inspection, out of the
        way of this run's saves), and removes the temporary folders of saves that never finished."""
        self.manager.close()
        self.manager = self._new_manager(remove_temporary=True)
        if not self._rejected:
            return
        if jax.process_index() == 0:
            self.rejected_directory.mkdir(parents=True, exist_ok=True)
            for step, why in self._rejected.items():
                target, n = self.rejected_directory / str(step), 1
                while target.exists():
                    target, n = self.rejected_directory / f"{step}.{n}", n + 1
                os.replace(self._folder(step), target)  # a sibling folder: the same filesystem
                (target / "REJECTED.txt").write_text(why + "\n")
                logging.warning("checkpoint %d moved to %s", step, target)
        _sync("set_aside")
        self._rejected = {}
        self.manager.reload()

    # -------------------------------------------------------------- restoring

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, state_template, shardings, data_iterator=None, step: Optional[int] = None):
        """The TrainState saved at `step` (default: the newest good one), laid out with `shardings`;
        the data iterator (when given) is moved to where it was. Returns (step, state)."""
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
        if step is None:
            if self.latest_step() is None:
                raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
            step = self.newest_good()
            if step is None:
                raise CorruptCheckpoint(f"{self.directory}: no checkpoint passes verification (see the warnings "
                                        "above for why each was skipped)")
        self.verify(step)
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

    # -------------------------------------------------------------- stopping

    def preempted(self, step: int) -> bool:
        """At a step boundary: a stop signal arrived, or (multi-host) jax's preemption service says so."""
        if self.signals.requested():
            return True
        return jax.process_count() > 1 and self.manager.reached_preemption(step)
