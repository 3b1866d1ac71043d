"""The step-memory check: XLA's figures read correctly, a step too large refused before it runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff_jax import cli
from ff_jax.train.memory import GIB, StepMemory, StepTooLarge, check_step_fits, step_memory

pytestmark = pytest.mark.xdist_group("train_cli")


def test_step_memory_reads_arguments_and_outputs_as_their_byte_sizes():
    x, y = jnp.ones((1000, 3), jnp.float32), jnp.ones((7,), jnp.int32)
    compiled = jax.jit(lambda a, b: (a * 2, b + 1)).lower(x, y).compile()
    memory = step_memory(compiled)
    assert memory.arguments == x.nbytes + y.nbytes
    # A tuple result also holds its table of element pointers (8 bytes each on CPU).
    assert 0 <= memory.outputs - (x.nbytes + y.nbytes) <= 8 * 2
    assert memory.total == memory.arguments + memory.outputs - memory.aliased + memory.temporaries


def test_donated_outputs_are_counted_once():
    x = jnp.ones((4096,), jnp.float32)
    compiled = jax.jit(lambda a: a + 1, donate_argnums=0).lower(x).compile()
    memory = step_memory(compiled)
    assert memory.aliased == x.nbytes
    assert memory.total == x.nbytes + memory.temporaries


def test_check_names_the_knobs_only_when_the_step_does_not_fit():
    memory = StepMemory(arguments=3 * GIB, outputs=3 * GIB, aliased=3 * GIB, temporaries=2 * GIB)
    check_step_fits(memory, 5 * GIB)  # 5 GiB needed, 5 GiB there
    with pytest.raises(StepTooLarge, match="examples_per_shard") as err:
        check_step_fits(memory, 4 * GIB)
    assert "accumulation_steps" in str(err.value) and "remat" in str(err.value) and "lora_rank" in str(err.value)
    check_step_fits(None, 1)  # a backend without analysis is not refused


def _train(tmp_path, workdir, *extra):
    return cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path / 'data'}",
                     "--gin.STEPS=3", "--gin.train.eval_every=-1", "--gin.CheckpointConfig.save_every=1",
                     f"--workdir={workdir}", *extra])


def test_train_refuses_a_step_larger_than_the_limit_before_any_step(tmp_path, capsys):
    workdir = tmp_path / "refused"
    assert _train(tmp_path, workdir, "--gin.train.memory_limit_gb=0.001") == 2
    err = capsys.readouterr().err.strip()
    assert "step too large" in err and "examples_per_shard" in err and "0.00 GiB" in err
    assert not list((workdir / "checkpoints").glob("*")) if (workdir / "checkpoints").exists() else True
    assert not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text()

    # The default limit (the host's memory) accepts the same run, and the run records its figures.
    workdir = tmp_path / "accepted"
    assert _train(tmp_path, workdir) == 0
    report = json.loads((workdir / "memory.json").read_text())
    assert 0 < report["step_total_gib"] < report["limit_gib"]
    assert report["peak_rss_gib"] > report["step_arguments_gib"] > 0
    assert np.isclose(report["step_total_gib"], report["step_arguments_gib"] + report["step_outputs_gib"]
                      - report["step_aliased_gib"] + report["step_temporaries_gib"])
