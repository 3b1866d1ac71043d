"""Issue 14, the checkpoint rows, reproduced for real: bytes flipped in and a data file truncated
from the newest checkpoint of a finished `ff-jax train` run, and a workdir on a disk that fills up.
Each asserts the new behaviour and that the good checkpoints the user had are still there."""

import contextlib
import json
import os
import resource
import subprocess
import uuid

import jax.numpy as jnp
import numpy as np
import pytest

from fault_runs import Runs, assert_finite_checkpoint, checkpoint_steps, digests, largest_data_file, losses
from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer, CheckpointSaveError, CorruptCheckpoint

pytestmark = [pytest.mark.xdist_group("train_subprocess"), pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("faults_checkpoint"))


@pytest.fixture(scope="module")
def reference(runs):
    return runs.reference()


def _rerun_after_damaging_checkpoint_8(runs, reference, name, damage):
    workdir = runs.copy_of(reference, name)
    assert checkpoint_steps(workdir) == [6, 8]
    previous = digests(workdir / "checkpoints" / "6")
    damaged = largest_data_file(workdir / "checkpoints" / "8")
    damage(damaged)
    damaged_bytes = damaged.read_bytes()
    done = runs.train(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    # Resumed from 6: steps 7 and 8 again, with the losses of the uninterrupted run.
    expected = dict(losses(reference))
    replayed = losses(workdir)[8:]
    assert [s for s, _ in replayed] == [7, 8]
    for step, loss in replayed:
        np.testing.assert_allclose(loss, expected[step], rtol=1e-6, err_msg=f"step {step}")
    # Nothing lost: checkpoint 6 as it was, the damaged 8 kept aside byte for byte, a new good 8.
    assert digests(workdir / "checkpoints" / "6") == previous
    rejected = workdir / "checkpoints.rejected" / "8"
    assert (rejected / damaged.relative_to(workdir / "checkpoints" / "8")).read_bytes() == damaged_bytes
    assert checkpoint_steps(workdir) == [6, 8]
    assert_finite_checkpoint(workdir / "checkpoints" / "8")
    return done.stderr, (rejected / "REJECTED.txt").read_text(), damaged.name


def test_flipped_bytes_in_the_newest_checkpoint_fall_back_to_the_previous_one(runs, reference):
    """Was: restored, trained on with loss NaN and saved NaN checkpoints over the good ones."""

    def flip(path):
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        path.write_bytes(bytes(data))

    stderr, why, name = _rerun_after_damaging_checkpoint_8(runs, reference, "flipped", flip)
    assert "checkpoint 8 skipped:" in stderr and name in stderr and "checksum mismatch" in stderr
    assert "using checkpoint 6, the newest that verifies" in stderr
    assert name in why and "checksum mismatch" in why


def test_a_truncated_data_file_falls_back_to_the_previous_checkpoint(runs, reference):
    """Was: a 146-line TensorStore traceback, no fallback, nothing saying which checkpoint was bad."""
    kept = {}

    def truncate(path):
        kept["size"] = path.stat().st_size
        os.truncate(path, kept["size"] // 3)

    stderr, why, name = _rerun_after_damaging_checkpoint_8(runs, reference, "truncated", truncate)
    said = f"{name}: {kept['size'] // 3} bytes, {kept['size']} when saved (truncated or overwritten)"
    assert said in stderr and said in why
    assert "Traceback" not in stderr


@contextlib.contextmanager
def _small_disk(folder, size_bytes: int, file_bytes: int):
    """A filesystem of `size_bytes` at `folder`: a tmpfs when this process may mount one (root).
    Else the training process gets a limit of `file_bytes` per file (its writes beyond fail with
    EFBIG). Yields (mounted, extra subprocess.run arguments, the error the OS gives)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", f"ff_jax_{uuid.uuid4().hex[:8]}",
                              str(folder)], capture_output=True).returncode == 0
    try:
        if mounted:
            yield True, {}, "no space left for checkpoint"
        else:
            def limit():
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))

            yield False, {"preexec_fn": limit}, "File too large"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_stops_training_at_the_failed_save_and_keeps_the_saved_checkpoints(runs, reference, tmp_path):
    """Was: the async save failed at step 8, training went on to the end, then died in the
    TensorBoard writer with a 651-line traceback."""
    files = [p for p in (reference / "checkpoints" / "8").rglob("*") if p.is_file()]
    checkpoint_bytes, largest = sum(p.stat().st_size for p in files), max(p.stat().st_size for p in files)
    # Room for two checkpoints (steps 1 and 2: orbax saves the first step too), not for a third.
    with _small_disk(tmp_path / "disk", int(2.6 * checkpoint_bytes), largest // 2) as (mounted, popen, os_error):
        workdir = tmp_path / "disk" / "run"
        done = runs.train(workdir, "train.num_steps=16", "OptimizerConfig.total_steps=16", **popen)
        assert done.returncode == 2
        message = done.stderr.strip().splitlines()[-1]
        assert message.startswith("ff-jax train: checkpoint save failed: ") and os_error in message, done.stderr[-3000:]
        if mounted:  # refused before writing: one line, no traceback of orbax's threads
            assert done.stderr.strip() == message
        failed = int(message.split("saving checkpoint ")[1].split()[0])
        stopped = int(message.split("Training stopped at step ")[1].split(";")[0])
        logged = [s for s, _ in losses(workdir)]
        # The error comes at the failed save's step or by the next save (which waits for it), not at the end.
        assert logged[-1] == stopped and failed <= stopped <= failed + 2 < 16
        kept = checkpoint_steps(workdir)
        if not mounted:  # the per-file limit fails the very first save
            assert kept == [] and failed == 1 and "no checkpoint was saved" in message
        else:
            assert kept == [1, 2] and failed == stopped == 4
            assert f"the newest good checkpoint is step 2 ({workdir / 'checkpoints' / '2'})" in message
        for step in kept:  # what was saved before the disk filled is whole
            Checkpointer(workdir / "checkpoints").verify(step)
            assert_finite_checkpoint(workdir / "checkpoints" / str(step))
        assert not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*"))  # the failed saves' space freed


def _two_checkpoints(directory):
    """Steps 1 and 2 of a small state, saved and sealed; returns what each holds."""
    states = {s: {"params": {"w": jnp.full((4, 8), float(s))}, "opt_state": {"mu": jnp.full((4, 8), -float(s))}}
              for s in (1, 2)}
    ckpt = Checkpointer(directory, CheckpointConfig(save_every=1, keep=2))
    for step, state in states.items():
        ckpt.save(step, state, force=True)
    ckpt.close()
    return states


def test_a_reader_skips_a_corrupt_newest_checkpoint_and_leaves_it_in_place(tmp_path):
    """What `ff-jax embed` restores (restore_fields): the newest good checkpoint, never a corrupt one."""
    directory = tmp_path / "checkpoints"
    states = _two_checkpoints(directory)
    damaged = largest_data_file(directory / "2")
    data = bytearray(damaged.read_bytes())
    data[-80:-16] = bytes(b ^ 0x5A for b in data[-80:-16])
    damaged.write_bytes(bytes(data))

    ckpt = Checkpointer(directory)
    step, restored = ckpt.restore_fields({"params": {"w": jnp.zeros((4, 8))}})
    np.testing.assert_array_equal(restored["params"]["w"], states[1]["params"]["w"])
    assert step == 1 and checkpoint_steps(tmp_path) == [1, 2]  # a reader moves nothing
    with pytest.raises(CorruptCheckpoint, match=f"{damaged.name}: checksum mismatch"):
        ckpt.restore_fields({"params": {"w": jnp.zeros((4, 8))}}, step=2)  # asked for by name: no fallback
    ckpt.close()


def test_a_checkpoint_without_its_manifest_is_not_trusted(tmp_path):
    """A save killed after orbax finished but before the manifest was written never counts."""
    directory = tmp_path / "checkpoints"
    _two_checkpoints(directory)
    (directory / "2" / "manifest.json").unlink()
    ckpt = Checkpointer(directory)
    assert ckpt.newest_good() == 1
    with pytest.raises(CorruptCheckpoint, match="no manifest.json, so its save never finished"):
        ckpt.verify(2)
    ckpt.prepare_to_write()  # a training run: moved aside, with the reason
    assert checkpoint_steps(tmp_path) == [1]
    assert "no manifest.json" in (tmp_path / "checkpoints.rejected" / "2" / "REJECTED.txt").read_text()
    ckpt.close()


def test_a_save_that_fails_once_is_retried_and_one_that_fails_twice_raises(tmp_path, monkeypatch):
    """The retry path without a full disk: orbax's save raises (as it does on ENOSPC) once, then
    twice. Old checkpoints are deleted only after a newer one is sealed."""
    import orbax.checkpoint as ocp

    directory = tmp_path / "checkpoints"
    states = _two_checkpoints(directory)
    real_save, failures = ocp.CheckpointManager.save, []

    def failing_save(self, step, *args, **kwargs):
        if failures:
            failures.pop()
            raise OSError(28, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    ckpt = Checkpointer(directory, CheckpointConfig(save_every=1, keep=2))
    failures.append(1)
    assert ckpt.save(3, states[2], force=True)
    ckpt.close()
    assert checkpoint_steps(tmp_path) == [2, 3]  # 3 sealed on the second try, then 1 deleted
    Checkpointer(directory).verify(3)

    ckpt = Checkpointer(directory, CheckpointConfig(save_every=1, keep=2))
    failures.extend([1, 1])
    with pytest.raises(CheckpointSaveError, match=r"saving checkpoint 4 failed: \[Errno 28\] No space left on device; "
                                                  r"saving step 4 again failed too.*newest good checkpoint is step 3"):
        ckpt.save(4, states[2], force=True)
    ckpt.close(raise_errors=False)
    assert checkpoint_steps(tmp_path) == [2, 3]


def _unlist_and_flip(checkpoint, reseal: bool):
    """Issue 26 row 1's edit: a file dropped from both maps of the manifest, then 4 of its bytes flipped.
    reseal: the manifest's own checksum recomputed too, as a careful hand edit would."""
    from ff_jax.files import SEAL, sealed

    manifest_file = checkpoint / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    name = "state/ocdbt.process_0/manifest.ocdbt"
    if name not in manifest["sha256"]:  # orbax's layout differs: any array data file
        name = str(largest_data_file(checkpoint).relative_to(checkpoint))
    del manifest["sha256"][name], manifest["bytes"][name]
    if reseal:
        manifest = sealed({k: v for k, v in manifest.items() if k != SEAL})
    manifest_file.write_text(json.dumps(manifest))
    data = bytearray((checkpoint / name).read_bytes())
    data[len(data) // 2:len(data) // 2 + 4] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 4])
    (checkpoint / name).write_bytes(bytes(data))
    return checkpoint / name


@pytest.mark.parametrize("reseal, said", [(False, "manifest.json: edited after it was written"),
                                          (True, "not listed in manifest.json")])
def test_a_file_the_manifest_does_not_list_is_not_trusted(tmp_path, reseal, said):
    """Was: step 2 restored, the flipped unlisted file read unchecked, no warning (the reader `ff-jax embed` uses)."""
    directory = tmp_path / "checkpoints"
    states = _two_checkpoints(directory)
    unlisted = _unlist_and_flip(directory / "2", reseal)
    ckpt = Checkpointer(directory)
    with pytest.raises(CorruptCheckpoint, match=said):
        ckpt.verify(2)
    if reseal:
        with pytest.raises(CorruptCheckpoint, match=f"{unlisted}: not listed"):
            ckpt.verify(2)
    step, restored = ckpt.restore_fields({"params": {"w": jnp.zeros((4, 8))}})
    assert step == 1  # the newest checkpoint that verifies, with a warning naming why 2 was skipped
    np.testing.assert_array_equal(restored["params"]["w"], states[1]["params"]["w"])
    ckpt.close()


def test_when_no_checkpoint_verifies_training_refuses_unless_asked_to_start_over(runs, reference):
    """Issue 26 row 3: was every checkpoint moved to checkpoints.rejected/ and a silent restart from step 0, exit 0."""
    workdir = runs.copy_of(reference, "none_verifies")
    for step in checkpoint_steps(workdir):
        data_file = largest_data_file(workdir / "checkpoints" / str(step))
        data = bytearray(data_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        data_file.write_bytes(bytes(data))
    before = digests(workdir)
    refused = runs.train(workdir)
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(f"ff-jax train: corrupt checkpoint: {workdir / 'checkpoints'}: none of the 2 "
                              "checkpoint(s) verifies (newest, step 8: "), message
    assert "--gin.train.start_over=True" in message and "Traceback" not in refused.stderr
    assert digests(workdir) == before  # nothing moved, nothing trained

    started_over = runs.train(workdir, "train.start_over=True")
    assert started_over.returncode == 0, started_over.stderr[-3000:]
    assert "training starts over from step 0 (--gin.train.start_over=True)" in started_over.stderr
    assert [s for s, _ in losses(workdir)][-8:] == list(range(1, 9))  # trained from step 1 again
    assert sorted(p.name for p in (workdir / "checkpoints.rejected").iterdir()) == ["6", "8"]  # kept aside
