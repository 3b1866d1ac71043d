"""Kill-and-resume through the real CLI: a training process killed with SIGKILL, resumed, stopped
with SIGTERM (which saves that step) and resumed again logs exactly the uninterrupted losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.xdist_group("train_subprocess"), pytest.mark.slow]

HERE = Path(__file__).resolve().parent
STEPS = 8
GIN = f"""
import toy_data
include 'model/tiny.gin'
train.data = @ToyData()
train.loss = @InfoNCE()
train.optimizer = @OptimizerConfig()
OptimizerConfig.learning_rate = 3e-3
OptimizerConfig.warmup_steps = 1
OptimizerConfig.total_steps = {STEPS}
train.checkpoint = @CheckpointConfig()
CheckpointConfig.save_every = 2
CheckpointConfig.keep = 2
train.num_steps = {STEPS}
train.eval_every = -1
train.progress = False
"""


def subprocess_env(cache_dir: Path, devices: int = 2) -> dict:
    env = dict(os.environ)
    # Cheaper XLA:CPU code generation: these runs are compile-bound, and the runs compared in a
    # test all use the same flags.
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    # One compilation shared by the runs of a test: later processes load it from disk.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _command(gin_file: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "ff_jax.cli", "train", f"--gin_file={gin_file}", f"--workdir={workdir}"]


def _logged(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_until(cmd, env, workdir: Path, step: int, sig) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if any(r["step"] >= step for r in _logged(workdir)):
            proc.send_signal(sig)
            break
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.wait(timeout=120)
    return proc


def test_sigkill_and_sigterm_resume_reproduce_the_uninterrupted_losses(tmp_path):
    gin_file = tmp_path / "toy.gin"
    gin_file.write_text(GIN)
    env = subprocess_env(tmp_path / "jax_cache")
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    done = subprocess.run(_command(gin_file, reference_dir), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = {r["step"]: r["loss"] for r in _logged(reference_dir)}
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert len(set(reference.values())) == STEPS  # a real curve, not a constant

    killed = _run_until(_command(gin_file, run_dir), env, run_dir, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stopped = _run_until(_command(gin_file, run_dir), env, run_dir, 5, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr.read()[-3000:]
    last_before_term = max(r["step"] for r in _logged(run_dir))
    checkpoints = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert last_before_term in checkpoints  # SIGTERM saved the step it stopped at
    done = subprocess.run(_command(gin_file, run_dir), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    records = _logged(run_dir)
    steps = [r["step"] for r in records]
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    assert len(steps) > STEPS  # some steps were replayed after the kill
    for record in records:  # every logged loss, replayed or not, is the uninterrupted one
        np.testing.assert_allclose(record["loss"], reference[record["step"]], rtol=1e-6,
                                   err_msg=f"step {record['step']}")


def test_restore_fields_reads_the_weights_and_leaves_the_optimiser_state_on_disk(tmp_path):
    """What `ff-jax embed` restores: params and frozen as saved, with no optimiser state built."""
    import jax.numpy as jnp

    from ff_jax.train.checkpointing import CheckpointConfig, Checkpointer

    saved = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "frozen": {"scale": jnp.full((3,), 2.5)},
             "opt_state": {"mu": jnp.ones((2, 3)), "nu": jnp.ones((2, 3))}, "step": jnp.asarray(7)}
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(async_save=False))
    ckpt.save(7, saved, force=True)
    ckpt.close()
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig(async_save=False))
    template = {"params": {"w": jnp.zeros((2, 3))}, "frozen": {"scale": jnp.zeros((3,))}}
    step, restored = ckpt.restore_fields(template)
    ckpt.close()
    assert step == 7 and set(restored) == {"params", "frozen"}
    np.testing.assert_array_equal(restored["params"]["w"], saved["params"]["w"])
    np.testing.assert_array_equal(restored["frozen"]["scale"], saved["frozen"]["scale"])
