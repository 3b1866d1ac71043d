"""Training with the logQ correction end to end: the sampling probabilities reach the training
batches and the validation pairs alike (a validation batch without them once stopped a MovieLens
run at its first validation)."""

import json

import numpy as np
import pytest

from ff_jax import cli

pytestmark = pytest.mark.xdist_group("train_cli")

STEPS = 3
# One device, two examples a step, a small validation: what the correction needs, no more (the
# 8-device, 64-example steps of tiny_smoke made this the suite's slowest test).
SMALL = ["--gin.make_mesh.num_devices=1", "--gin.BatchConfig.examples_per_shard=2", "--gin.train.progress=False",
         "--gin.FeedData.validation_members=16", "--gin.FeedData.validation_corpus=64",
         "--gin.train.tensorboard=False"]


def test_logq_training_validates_and_differs_from_plain_infonce(tmp_path, tiny_feed_world_dir):
    def train(workdir, *extra):
        code = cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tiny_feed_world_dir}",
                         f"--gin.STEPS={STEPS}", f"--gin.train.eval_every={STEPS}", f"--workdir={workdir}",
                         *SMALL, *extra])
        assert code == 0
        return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    corrected = train(tmp_path / "logq", "--gin.InfoNCE.logq_correction=True")
    plain = train(tmp_path / "plain")
    validation = [m for m in corrected if m["split"] == "validation"]
    assert [m["step"] for m in validation] == [STEPS] and np.isfinite(validation[0]["loss"])
    assert 0.0 <= validation[0]["recall@10"] <= 1.0 and validation[0]["recall@10"] != validation[0]["loss"]
    first = lambda metrics: next(m for m in metrics if m["split"] == "train")  # noqa: E731
    # Step 1 runs at learning rate 0 (warm-up) on the same weights and batch in both runs: the same
    # examples, tokens and cosines, and only the loss, which the correction changes, differs.
    for key in ("examples", "tokens", "positive_cosine", "learning_rate"):
        assert first(corrected)[key] == pytest.approx(first(plain)[key], rel=1e-6), key
    assert first(corrected)["learning_rate"] == 0.0
    assert abs(first(corrected)["loss"] - first(plain)["loss"]) > 1e-3
