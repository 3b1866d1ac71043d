"""A tiny dual encoder trained briefly on feed_world beats random recall@10 by a wide margin, and
beats the same model untrained (step 0).

The dataset is feed_world "tiny" with compact prompts (industry + text per item; headline +
recent post texts per member) and a word-level tokenizer fitted to the corpus, so a 2-layer
d=64 model can learn topic matching in a CPU-sized run. Recall is measured by `train`'s own
periodic validation: held-out (later-in-time) targets ranked among the corpus items. The run is
configs/experiments/compact_feed_world.gin, the one `make demo` trains.
"""


import numpy as np
import pytest

from ff_jax.data import compact_feed_world as compact_feed_world_data
from ff_jax.gin_cli import configured
from ff_jax.train.loop import train
from ff_jax.train.metrics_log import read_jsonl

pytestmark = [pytest.mark.xdist_group("train_recall"), pytest.mark.slow]

@pytest.fixture(scope="module")
def compact_feed_world(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, compact_feed_world_data.prepare(data_dir)[1]


def test_tiny_model_beats_random_recall_by_a_wide_margin(compact_feed_world, tmp_path):
    data_dir, tokenizer = compact_feed_world
    with configured(["experiments/compact_feed_world.gin"], [f"DATA_DIR={str(data_dir)!r}",
                                                             f"TOKENIZER={tokenizer!r}", "STEPS=80"]):
        out = train(str(tmp_path / "run"), recall_ks=(10,), progress=False)
    validation = out["validation"]
    # The same model untrained: one step at learning rate 0 from the same seed leaves the initial
    # weights, so its validation is the step-0 model's.
    with configured(["experiments/compact_feed_world.gin"], [f"DATA_DIR={str(data_dir)!r}", f"TOKENIZER={tokenizer!r}",
                                                             "STEPS=1", "OptimizerConfig.warmup_steps=0",
                                                             "OptimizerConfig.learning_rate=0.0"]):
        untrained = train(str(tmp_path / "step0"), recall_ks=(10,), progress=False)["validation"]
    # Measured after 80 steps: recall@10 0.026 against random 0.0025 (10x; 0.049 at the 32-dim
    # Matryoshka slice), in-batch accuracy 0.26 against ~1/64 for a random model.
    assert validation["recall@10"] > 5 * validation["random_recall@10"]
    assert validation["in_batch_accuracy"] > 0.15
    # Against the same model at step 0, which already gets 4x random from shared words alone.
    # Measured: recall@10 0.0255 vs 0.0102 (2.5x); at 32 and 16 dims 0.048 and 0.051 vs 0.0;
    # in-batch accuracy 0.245 vs 0.071; validation loss 2.48 vs 4.02.
    assert validation["recall@10"] >= 2 * untrained["recall@10"], (validation, untrained)
    for width in ("dim32", "dim16"):
        assert validation[f"recall@10/{width}"] > untrained[f"recall@10/{width}"] + 0.02, (width, validation, untrained)
    assert validation["in_batch_accuracy"] > 2 * untrained["in_batch_accuracy"]
    assert validation["loss"] < untrained["loss"] - 1.0
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 80 and np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.3
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl", split="validation")) == 1
    assert (tmp_path / "run" / "operative_config.gin").exists()
