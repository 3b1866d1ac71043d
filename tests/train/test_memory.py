"""The step-memory check: XLA's figures read correctly, a step too large refused before it runs."""

import json
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from ff_jax import cli
from ff_jax.model import Llama, LlamaConfig
from ff_jax.train.memory import GIB, StepMemory, StepTooLarge, check_step_fits, step_memory

pytestmark = pytest.mark.xdist_group("train_cli")


def test_step_memory_reads_arguments_and_outputs_as_their_byte_sizes():
    x, y = jnp.ones((1000, 3), jnp.float32), jnp.ones((7,), jnp.int32)
    compiled = jax.jit(lambda a, b: (a * 2, b + 1)).lower(x, y).compile()
    memory = step_memory(compiled)
    assert memory.arguments == x.nbytes + y.nbytes
    # A tuple result also holds its table of element pointers (8 bytes each on CPU).
    assert 0 <= memory.outputs - (x.nbytes + y.nbytes) <= 8 * 2
    # Elementwise work needs no scratch and nothing is donated: the step holds its inputs and outputs.
    assert memory.aliased == 0 and memory.temporaries == 0
    assert memory.total == 2 * (x.nbytes + y.nbytes) + (memory.outputs - x.nbytes - y.nbytes)


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


# One device and two examples a step: the smallest step the check can refuse (8 devices of 8 examples
# each compiled a 1.2 GiB step, most of this test's time).
SMALL = ["--gin.make_mesh.num_devices=1", "--gin.BatchConfig.examples_per_shard=2", "--gin.train.progress=False"]


def _train(data_dir, workdir, *extra):
    return cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={data_dir}",
                     "--gin.STEPS=2", "--gin.OptimizerConfig.warmup_steps=1", "--gin.train.eval_every=-1",
                     "--gin.CheckpointConfig.save_every=1",
                     f"--workdir={workdir}", *SMALL, *extra])


def test_train_refuses_a_step_larger_than_the_limit_before_any_step(tmp_path, capsys, tiny_feed_world_dir):
    workdir = tmp_path / "refused"
    assert _train(tiny_feed_world_dir, workdir, "--gin.train.memory_limit_gb=0.001") == 2
    err = capsys.readouterr().err.strip()
    assert "step too large" in err and "examples_per_shard" in err and "0.00 GiB" in err
    assert not (workdir / "checkpoints").exists() or not list((workdir / "checkpoints").glob("*"))
    assert not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text()

    # The default limit (the host's memory) accepts the same run, and the run records its figures.
    workdir = tmp_path / "accepted"
    assert _train(tiny_feed_world_dir, workdir) == 0
    report = json.loads((workdir / "memory.json").read_text())
    # The limit of one CPU device is the host's physical memory, read here from the OS.
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert report["limit_gib"] == pytest.approx(host / GIB)
    # The donated train state is the tiny model's parameters and AdamW's two moments, float32, written
    # in place: counted from a fresh model of the run's config, not from the report.
    config = json.loads((workdir / "run.json").read_text())["model"]
    params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(Llama(LlamaConfig(**config), rngs=nnx.Rngs(0)),
                                                                  nnx.Param)))
    state_bytes = 3 * 4 * params
    assert state_bytes <= report["step_aliased_gib"] * GIB <= state_bytes + 64  # + AdamW's step counters
    # Arguments: that state and a batch of 2 examples (well under 1 MiB of tokens and masks).
    assert 0 < report["step_arguments_gib"] * GIB - state_bytes < 2**20
    assert report["step_temporaries_gib"] > 0 and report["peak_rss_gib"] > report["step_arguments_gib"]
