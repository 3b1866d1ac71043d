"""feed_world: a seeded simulator of a professional network's feed, with known ground truth.

    world = generate(feed_world_config("small", seed=0))
    world.tables          # FeedTables in the generic schema (users, items, interactions)
    world.truth           # what produced them: affinities, topics, popularity, follows, p(engage)

Members have a latent topic affinity (mostly their primary topic, which their headline,
industry and skills reveal); items have a topic (which their text reveals), an author and a
heavy-tailed latent popularity (which only their view/like/comment counts reveal). Whether
a member engages with an impression depends on affinity, popularity, recency and whether
they follow the author (feed_world_impressions.py has the formula). Same config and seed ⇒
the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import gin
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ff_jax.data.feed_world_impressions import SOURCES, follow_graph, simulate_impressions
from ff_jax.data.feed_world_people import TOPIC_NAMES, make_items, make_members, topic_weights
from ff_jax.data.feed_world_vocab import TOPICS
from ff_jax.data.schema import Column, generic_schema
from ff_jax.data.tables import FeedTables, validate_tables
from ff_jax.data.tables_checks import index_in


@dataclass(frozen=True)
class FeedWorldConfig:
    name: str = "tiny"
    seed: int = 0
    # Sizes
    n_members: int = 400
    n_authors: int = 200
    n_items: int = 4_000
    n_topics: int = 20
    impressions_per_member: float = 60.0   # mean over a whole window for an average member
    days: int = 120                        # the window impressions happen in
    prehistory_days: int = 30              # items may be published this long before the window
    start: int = 1_704_067_200             # 2024-01-01 UTC
    # Members
    new_member_fraction: float = 0.2       # join during the window's last 40%: few interactions
    primary_topic_weight: float = 0.55     # affinity = w·primary + (1−w)·Dirichlet(concentration)
    affinity_concentration: float = 0.3
    activity_sigma: float = 0.8            # lognormal spread of how much members scroll
    connections_per_member: int = 12
    # Items
    popularity_tail: float = 1.2           # Pareto shape of latent popularity (smaller = heavier tail)
    author_on_topic: float = 0.85          # share of an author's posts in their own topic
    words_per_item: tuple[int, int] = (12, 28)
    topic_word_share: float = 0.5          # words from the item's topic; then noise (other topics), then filler
    noise_word_share: float = 0.15
    # Feed and engagement
    feed_mix: tuple[float, float, float, float] = (0.4, 0.15, 0.2, 0.25)  # topic, connection, popular, recent
    recency_window_days: float = 7.0
    base_logit: float = -3.0
    w_affinity: float = 0.9
    w_popularity: float = 0.7
    w_recency: float = 0.6
    recency_tau_days: float = 3.0
    w_connection: float = 1.0
    chunk_members: int = 10_000            # impressions are simulated this many members at a time

    def __post_init__(self):
        if not 1 <= self.n_topics <= len(TOPICS):
            raise ValueError(f"FeedWorldConfig.n_topics must be in 1..{len(TOPICS)}, got {self.n_topics}")
        if min(self.n_members, self.n_authors, self.n_items) < 1:
            raise ValueError("FeedWorldConfig: n_members, n_authors and n_items must be positive")
        if abs(sum(self.feed_mix) - 1) > 1e-6 or min(self.feed_mix) < 0:
            raise ValueError(f"FeedWorldConfig.feed_mix must be 4 non-negative shares summing to 1, got {self.feed_mix}")
        if not 2 <= self.words_per_item[0] <= self.words_per_item[1]:
            raise ValueError(f"FeedWorldConfig.words_per_item must be (low, high) with 2 <= low <= high, "
                             f"got {self.words_per_item}")
        if self.topic_word_share + self.noise_word_share > 1:
            raise ValueError("FeedWorldConfig: topic_word_share + noise_word_share must be <= 1")


SIZES = {
    "tiny": dict(n_members=400, n_authors=200, n_items=4_000),
    "small": dict(n_members=5_000, n_authors=1_000, n_items=50_000),
    "medium": dict(n_members=20_000, n_authors=5_000, n_items=200_000),
    "1m": dict(n_members=100_000, n_authors=50_000, n_items=1_000_000),
}


@gin.configurable
def feed_world_config(size: str = "tiny", seed: int = 0, **overrides) -> FeedWorldConfig:
    """A named size ("tiny", "small", "medium", "1m") with any field overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown feed_world size {size!r} (known: {sorted(SIZES)})")
    return FeedWorldConfig(**{"name": size, "seed": seed, **SIZES[size], **overrides})


FEED_WORLD_SCHEMA = generic_schema(
    users=[Column("name", "text"), Column("headline", "text"), Column("title", "text"),
           Column("company", "categorical"), Column("industry", "categorical"), Column("skills", "text"),
           Column("seniority", "categorical"), Column("location", "categorical"), Column("joined_at", "timestamp")],
    items=[Column("post_type", "categorical"), Column("media_type", "categorical"), Column("author_name", "text"),
           Column("author_headline", "text"), Column("author_company", "categorical"),
           Column("author_industry", "categorical"), Column("author_title", "text"),
           Column("article_title", "text"), Column("article_source", "categorical"),
           Column("view_count", "numeric", min_value=0), Column("like_count", "numeric", min_value=0),
           Column("comment_count", "numeric", min_value=0)],
)


@dataclass
class FeedWorldTruth:
    """The latent state behind the tables; arrays align with the rows of the tables."""

    topics: list[str]
    member_affinity: np.ndarray       # float32 [members, topics]
    member_primary_topic: np.ndarray  # [members]
    member_is_new: np.ndarray         # joined late in the window
    item_topic: np.ndarray            # [items]
    item_popularity: np.ndarray       # latent popularity (the counts are noisy draws around it)
    item_author: np.ndarray           # author index
    author_topic: np.ndarray
    follows_offsets: np.ndarray       # CSR: member m follows follows_authors[offsets[m]:offsets[m+1]]
    follows_authors: np.ndarray
    impression_probability: np.ndarray  # [interactions] the true p(engaged)
    impression_source: np.ndarray       # index into SOURCES
    impression_connected: np.ndarray    # member follows the item's author
    sources: tuple[str, ...] = SOURCES

    def impression_affinity(self, tables: FeedTables) -> np.ndarray:
        """affinity[member, topic(item)] per interaction row."""
        member = index_in(tables.interactions["user_id"], tables.users["user_id"])
        item = index_in(tables.interactions["item_id"], tables.items["item_id"])
        return self.member_affinity[member, self.item_topic[item]]


@dataclass
class FeedWorld:
    config: FeedWorldConfig
    tables: FeedTables
    truth: FeedWorldTruth


def generate(config: FeedWorldConfig | None = None, progress: bool = True) -> FeedWorld:
    """Simulate a feed. Deterministic: one numpy stream per stage, spawned from config.seed."""
    cfg = config or FeedWorldConfig()
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(5)]
    total = cfg.n_items + cfg.n_members + 3
    with tqdm(total=total, desc=f"feed_world {cfg.name}", unit="row", unit_scale=True, disable=not progress,
              leave=False) as bar:
        weights = topic_weights(streams[0], cfg.n_topics)
        bar.set_postfix_str("members")
        members = make_members(cfg, streams[1], weights)
        bar.update(1)
        bar.set_postfix_str("items")
        items = make_items(cfg, streams[2], weights, bar.update)
        bar.update(1)
        bar.set_postfix_str("impressions")
        offsets, followed = follow_graph(cfg, streams[4], members, items)
        log = simulate_impressions(cfg, streams[3], members, items, offsets, followed, bar.update)
        bar.set_postfix_str("validating")
        users, item_frame = members.frame, items.frame
        interactions = {"user_id": users["user_id"].to_numpy()[log.member],
                        "item_id": item_frame["item_id"].to_numpy()[log.item],
                        "timestamp": log.time, "engaged": log.engaged}
        tables = validate_tables(users, item_frame, pd.DataFrame(interactions), FEED_WORLD_SCHEMA,
                                 f"feed_world-{cfg.name}")
        bar.update(1)
    if tables.summary.rows_dropped or len(tables.interactions) != len(log.member):
        raise AssertionError(f"feed_world produced rows its own validation drops:\n{tables.summary}")
    tables.meta["feed_world_config"] = dataclasses.asdict(cfg)
    truth = FeedWorldTruth(list(TOPIC_NAMES[: cfg.n_topics]), members.affinity, members.primary, members.is_new,
                           items.topic, items.popularity, items.author, items.author_topic, offsets, followed,
                           log.probability, log.source, log.connected)
    return FeedWorld(cfg, tables, truth)


def main(argv=None) -> None:
    """`python -m ff_jax.data.feed_world --size 1m`: generate once and print the time it took."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    begin = time.perf_counter()
    world = generate(feed_world_config(args.size, args.seed))
    seconds = time.perf_counter() - begin
    print(world.tables)
    print(f"generated in {seconds:.1f} s; engagement rate {world.tables.interactions['engaged'].mean():.3f}")


if __name__ == "__main__":
    main()
