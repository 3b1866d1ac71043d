"""Training with the logQ correction end to end: the sampling probabilities reach the training
batches and the validation pairs alike (a validation batch without them once stopped a MovieLens
run at its first validation)."""

import json

import numpy as np
import pytest

from ff_jax import cli

pytestmark = pytest.mark.xdist_group("train_cli")


def test_logq_training_validates_and_differs_from_plain_infonce(tmp_path):
    def train(workdir, *extra):
        code = cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path / 'data'}",
                         "--gin.STEPS=3", "--gin.train.eval_every=3", f"--workdir={workdir}", *extra])
        assert code == 0
        return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    corrected = train(tmp_path / "logq", "--gin.InfoNCE.logq_correction=True")
    plain = train(tmp_path / "plain")
    validation = [m for m in corrected if m["split"] == "validation"]
    assert validation and np.isfinite(validation[-1]["loss"]) and "recall@10" in validation[-1]
    first = lambda metrics: next(m["loss"] for m in metrics if m["split"] == "train")
    assert first(corrected) != first(plain)  # same weights and batch at step 1: only the correction differs
