"""A tiny training run to export: a feed of two topics, a 2-layer model whose checkpoint holds
weights a fresh model would not have (the initial ones plus noise), and its exported bundle."""

import numpy as np
import pandas as pd
import pytest

from ff_jax.data import prepared as tb
from ff_jax.data.prompts import PromptTemplate
from ff_jax.data.schema import Column, generic_schema
from ff_jax.data.tables import validate_tables

SCHEMA = generic_schema(users=[Column("headline", "text"), Column("age", "numeric", min_value=0)],
                        items=[Column("topic", "categorical"), Column("likes", "numeric", min_value=0),
                               Column("author", "categorical")])
# History items carry fewer fields and shorter text than item prompts: the bundle must cut them back.
TEMPLATE = PromptTemplate(system_prompt="Member:", history_fields=("topic", "likes", "text"), item_text_chars=80,
                          history_text_chars=24, max_history_items=6, timestamps="omit")
GIN = ["include 'model/tiny.gin'", "include 'runs/train.gin'", "DATASET = 'serve_feed'", "DATASET_CONFIG = 'base'",
       "FeedData.prepare = False", "BatchConfig.examples_per_shard = 2", "BatchConfig.length = 256",
       "BatchConfig.member_budget = 192", "BatchConfig.item_budget = 96", "EmbedConfig.shard_size = 16",
       "create_index.kind = 'exact'"]


def tables():
    rng = np.random.default_rng(0)
    topic_of_user = rng.integers(0, 2, 20)
    users = pd.DataFrame({"user_id": [f"m{i}" for i in range(20)],
                          "headline": [("cook" if t else "coder") + f" number {i}" for i, t in enumerate(topic_of_user)],
                          "age": rng.integers(18, 70, 20).astype(float)})
    words = ["recipes", "python", "bread", "compilers", "soup", "kernels"]
    items = pd.DataFrame({"item_id": [f"p{i:02d}" for i in range(40)], "topic": ["food", "code"] * 20,
                          "likes": rng.integers(0, 500, 40).astype(float), "author": [f"a{i % 5}" for i in range(40)],
                          "text": [f"post {i} about " + " ".join(rng.choice(words, 1 + i % 12)) for i in range(40)],
                          # p39's time is unknown: its catalogue entry must say null, not a made-up time
                          "created_at": [1_650_000_000 + 3600 * i for i in range(39)] + [np.nan]})
    rows = []
    for t in range(600):
        u = int(rng.integers(20))
        item = int(rng.integers(20)) * 2 + (0 if topic_of_user[u] else 1)
        rows.append((f"m{u}", f"p{item:02d}", 1_600_000_000 + t * 60, bool(rng.random() < 0.8)))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "engaged"])
    return validate_tables(users, items, interactions, SCHEMA, "serve_feed")


class ServeFeed(tb._FeedBuilder):
    name = "serve_feed"
    BUILDER_CONFIGS = [tb.FeedConfig(name="base", template=TEMPLATE)]

    def _load_tables(self):
        return tables()


class ServeFeedCorpus(ServeFeed):
    name = "serve_feed_corpus"


def noisy_checkpoint(workdir, data):
    """Saves step 0: the seeded initial model plus noise, so only a restore reproduces it."""
    import jax
    from flax import nnx

    from ff_jax.model import presets
    from ff_jax.model.sharding import logical_axis_rules, make_mesh
    from ff_jax.train import loop, step as steps
    from ff_jax.train.checkpointing import Checkpointer
    from ff_jax.train.dual_encoder import EncoderConfig
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.optimizer import OptimizerConfig, make_optimizer

    mesh, rules = make_mesh(), logical_axis_rules()
    model, _ = loop.build_model(data, EncoderConfig(), InfoNCE(), presets.tiny(vocab_size=512), None, {}, mesh,
                                rules, 0)
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
    nnx.update(model, jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape, p.dtype), params))
    _, state, _ = steps.init_train_state(model, make_optimizer(OptimizerConfig()), 0, 0, mesh, rules)
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(0, state, force=True)
    ckpt.close()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A training run's workdir: config.gin and a checkpoint."""
    from ff_jax.train.run import Run

    root = tmp_path_factory.mktemp("serve_run")
    for cls in (ServeFeed, ServeFeedCorpus):
        cls(config="base", data_dir=str(root / "data")).download_and_prepare()
    workdir = root / "run"
    workdir.mkdir()
    (workdir / "config.gin").write_text("\n".join([*GIN, f"DATA_DIR = '{root / 'data'}'", ""]))
    noisy_checkpoint(workdir, Run.open(workdir).spec.data)
    return workdir


@pytest.fixture(scope="session")
def bundle_dir(run_dir, tmp_path_factory):
    """The run exported through the command line (read-only for tests: copy it to tamper)."""
    from ff_jax import cli

    out = tmp_path_factory.mktemp("bundles") / "bundle"
    assert cli.main(["export", f"--workdir={run_dir}", f"--out={out}"]) == 0
    return out


@pytest.fixture(scope="session")
def ranker_dir(run_dir):
    """A cross-encoder ranker trained for three steps on the same feed (ff-jax rank-train)."""
    from ff_jax import cli

    workdir = run_dir.parent / "ranker"
    assert cli.main(["rank-train", "--gin_file=ranker/tiny_smoke.gin", f"--gin.DATA_DIR={run_dir.parent / 'data'}",
                     "--gin.DATASET=serve_feed", "--gin.DATASET_CONFIG=base", "--gin.FeedData.prepare=False",
                     "--gin.STEPS=3", "--gin.RankerData.context_budget=192", "--gin.RankerConfig.candidate_budget=128",
                     "--gin.train_ranker.progress=False", "--gin.train_ranker.tensorboard=False",
                     f"--workdir={workdir}"]) == 0
    return workdir


@pytest.fixture(scope="session")
def ranked_bundle_dir(run_dir, ranker_dir, tmp_path_factory):
    """The run and the ranker exported together (read-only for tests)."""
    from ff_jax import cli

    out = tmp_path_factory.mktemp("bundles") / "ranked"
    assert cli.main(["export", f"--workdir={run_dir}", f"--ranker={ranker_dir}", f"--out={out}"]) == 0
    return out
