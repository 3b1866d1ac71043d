"""feed_world: determinism, the generic shape, and that its ground truth is what drives the log."""

import hashlib
import re

import numpy as np
import pandas as pd
import pytest

from ff_jax.data.feed_world import (FEED_WORLD_SCHEMA, FeedWorldConfig, feed_world_config, generate)
from ff_jax.data.feed_world_people import DAY, INDUSTRIES
from ff_jax.data.splits import temporal_split
from ff_jax.data.tables import load_tables


@pytest.fixture(scope="module")
def world():
    return generate(feed_world_config("tiny", seed=3), progress=False)


def _digest(world) -> str:
    h = hashlib.sha256()
    for frame in (world.tables.users, world.tables.items, world.tables.interactions):
        h.update(frame.to_csv(index=False).encode())
    for name in ("member_affinity", "item_topic", "item_popularity", "impression_probability", "follows_authors"):
        h.update(np.ascontiguousarray(getattr(world.truth, name)).tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(world):
    again = generate(feed_world_config("tiny", seed=3), progress=False)
    assert _digest(again) == _digest(world)
    other = generate(feed_world_config("tiny", seed=4), progress=False)
    assert _digest(other) != _digest(world)
    assert (other.tables.items["text"] != world.tables.items["text"]).mean() > 0.99


def test_sizes_ids_and_counts(world):
    cfg, t = world.config, world.tables
    assert (len(t.users), len(t.items)) == (cfg.n_members, cfg.n_items)
    assert t.users["user_id"].is_unique and t.items["item_id"].is_unique
    assert t.summary.rows_dropped == 0
    views, likes, comments = (t.items[c].to_numpy() for c in ("view_count", "like_count", "comment_count"))
    assert (comments <= likes).all() and (likes <= views).all() and (comments >= 0).all()
    assert ((t.items["post_type"] == "article") == (t.items["article_title"] != "")).all()
    assert len(world.truth.impression_probability) == len(t.interactions) == len(world.truth.impression_source)


def test_impressions_follow_creation_and_joining(world):
    t, cfg = world.tables, world.config
    inter = t.interactions.merge(t.items[["item_id", "created_at"]], on="item_id")
    inter = inter.merge(t.users[["user_id", "joined_at"]], on="user_id")
    assert (inter["timestamp"] >= inter["created_at"]).all()
    assert (inter["timestamp"] >= inter["joined_at"]).all()
    assert inter["timestamp"].between(cfg.start, cfg.start + cfg.days * DAY).all()
    assert not t.interactions.duplicated(["user_id", "item_id"]).any()


def _bag_of_words(texts: pd.Series) -> np.ndarray:
    tokens = [re.findall(r"[a-z0-9#-]+", text.lower()) for text in texts]
    vocab = {w: k for k, w in enumerate(sorted({w for doc in tokens for w in doc}))}
    counts = np.zeros((len(tokens), len(vocab)))
    for row, doc in enumerate(tokens):
        np.add.at(counts[row], [vocab[w] for w in doc], 1)
    return counts / np.linalg.norm(counts, axis=1, keepdims=True)


def test_topic_is_learnable_from_text(world):
    """A nearest-centroid bag-of-words classifier fitted on half the items finds the other half's topic."""
    x, topic = _bag_of_words(world.tables.items["text"]), world.truth.item_topic
    half = len(topic) // 2
    centroids = np.stack([x[:half][topic[:half] == k].mean(0) for k in range(world.config.n_topics)])
    accuracy = ((x[half:] @ centroids.T).argmax(1) == topic[half:]).mean()
    assert accuracy > 0.9  # chance is 1/20


def test_popularity_is_heavy_tailed_and_visible_in_counts(world):
    views = world.tables.items["view_count"].to_numpy()
    top = np.sort(views)[::-1][: len(views) // 100]
    assert top.sum() / views.sum() > 0.15  # the top 1% of posts hold a large share of views
    ranks = lambda v: np.argsort(np.argsort(v))
    spearman = np.corrcoef(ranks(views), ranks(world.truth.item_popularity))[0, 1]
    assert spearman > 0.8


def _rate_by_quartile(values: np.ndarray, engaged: np.ndarray) -> list[float]:
    cut = np.quantile(values, [0.25, 0.5, 0.75])
    bins = np.searchsorted(cut, values, side="right")
    return [engaged[bins == b].mean() for b in range(4)]


def test_engagement_rises_with_affinity_popularity_recency_and_connection(world):
    t, truth = world.tables, world.truth
    engaged = t.interactions["engaged"].to_numpy()
    item_row = t.interactions["item_id"].str.slice(1).astype(int).to_numpy()
    for name, values in [("affinity", truth.impression_affinity(t)),
                         ("latent popularity", truth.item_popularity[item_row]),
                         ("view_count", t.items["view_count"].to_numpy()[item_row]),
                         ("freshness", -(t.interactions["timestamp"].to_numpy()
                                         - t.items["created_at"].to_numpy()[item_row]))]:
        rates = _rate_by_quartile(values, engaged)
        assert np.all(np.diff(rates) > 0), (name, rates)
    connected = truth.impression_connected
    assert engaged[connected].mean() > 1.5 * engaged[~connected].mean()
    # The log is a draw from the stated probabilities (calibration within 4 standard errors).
    p = truth.impression_probability.astype(float)
    assert abs(engaged.mean() - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)


def test_profiles_reveal_the_primary_topic_and_new_joiners_are_new(world):
    t, truth = world.tables, world.truth
    assert (t.users["industry"].to_numpy() == INDUSTRIES[truth.member_primary_topic]).all()
    per_member = t.interactions.groupby("user_id").size().reindex(t.users["user_id"], fill_value=0).to_numpy()
    assert np.median(per_member[truth.member_is_new]) < 0.5 * np.median(per_member[~truth.member_is_new])
    splits = temporal_split(t, progress=False)
    is_new = dict(zip(t.users["user_id"], truth.member_is_new))
    share = lambda cohort: np.mean([is_new[m.user_id] for m in splits.test if m.cohort == cohort])
    assert share("new") > 2 * share("established")


def test_round_trips_through_the_generic_files(world, tmp_path):
    t = world.tables
    t.users.to_csv(tmp_path / "users.csv", index=False)
    t.items.to_parquet(tmp_path / "items.parquet")
    t.interactions.to_csv(tmp_path / "interactions.csv", index=False)
    back = load_tables(tmp_path / "users.csv", tmp_path / "items.parquet", tmp_path / "interactions.csv",
                       FEED_WORLD_SCHEMA)
    for ours, theirs in ((t.users, back.users), (t.items, back.items), (t.interactions, back.interactions)):
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)


def test_config_validation_and_named_sizes():
    assert feed_world_config("1m").n_items == 1_000_000 and feed_world_config("1m").n_members == 100_000
    assert feed_world_config("small", n_topics=5).n_topics == 5
    with pytest.raises(ValueError, match="unknown feed_world size"):
        feed_world_config("huge")
    with pytest.raises(ValueError, match="feed_mix"):
        FeedWorldConfig(feed_mix=(0.5, 0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="n_topics"):
        FeedWorldConfig(n_topics=99)
    few = generate(feed_world_config("tiny", n_topics=3, n_items=500, n_members=50), progress=False)
    assert set(np.unique(few.truth.item_topic)) <= {0, 1, 2}
