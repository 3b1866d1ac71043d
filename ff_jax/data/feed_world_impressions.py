"""feed_world, part 2: who sees what, and whether they engage.

Each impression picks a source: a topic the member likes (drawn from their latent
affinity), an author they follow, what is popular, or anything recent. The item comes from
items created in the last `recency_window_days` before the impression, weighted by latent
popularity (uniform for the "anything" source). Engagement is a Bernoulli draw with

    logit = base + w_affinity·log(K·affinity[member, topic] + 0.05) + w_popularity·z(log popularity)
            − w_recency·age_days / recency_tau_days + w_connection·[member follows the author]

so each factor's effect is known and testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ff_jax.data.feed_world_people import DAY, Items, Members

SOURCES = ("topic", "connection", "popular", "recent")


@dataclass
class Impressions:
    member: np.ndarray      # row of the users table
    item: np.ndarray        # row of the items table
    time: np.ndarray        # unix s
    engaged: np.ndarray
    probability: np.ndarray  # the true engagement probability
    source: np.ndarray       # index into SOURCES
    connected: np.ndarray    # the member follows the item's author


class _Index:
    """Items sorted by (group, created): time windows per group become searchsorted ranges."""

    def __init__(self, group: np.ndarray, created: np.ndarray, weight: np.ndarray, base: int):
        self.offset = (created - base).astype(np.int64)
        assert (self.offset >= 0).all() and (self.offset < 2**32).all()
        self.order = np.lexsort((created, group))
        self.key = (group[self.order].astype(np.int64) << 32) | self.offset[self.order]
        self.cum = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        self.base = base

    def window(self, group: np.ndarray, start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = group.astype(np.int64) << 32
        lo = np.searchsorted(self.key, g | np.maximum(start - self.base, 0), side="left")
        hi = np.searchsorted(self.key, g | np.maximum(stop - self.base, 0), side="right")
        return lo, hi

    def pick(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, weighted: bool) -> np.ndarray:
        """One item per range (weighted by `weight` or uniform); −1 for empty ranges."""
        u = rng.random(len(lo))
        if weighted:
            target = self.cum[lo] + u * (self.cum[hi] - self.cum[lo])
            pos = np.clip(np.searchsorted(self.cum, target, side="right") - 1, lo, np.maximum(hi - 1, lo))
        else:
            pos = lo + np.floor(u * (hi - lo)).astype(np.int64)
        return np.where(hi > lo, self.order[np.minimum(pos, len(self.order) - 1)], -1)


def follow_graph(cfg, rng: np.random.Generator, members: Members, items: Items) -> tuple[np.ndarray, np.ndarray]:
    """Each member follows `connections_per_member` authors, most of them in their primary topic.

    Returns CSR offsets and followed authors (row = member).
    """
    n, c = cfg.n_members, cfg.connections_per_member
    by_topic = np.argsort(items.author_topic, kind="stable")
    starts = np.searchsorted(items.author_topic[by_topic], np.arange(cfg.n_topics + 1))
    size = (starts[1:] - starts[:-1])[members.primary]
    same = by_topic[np.minimum(starts[members.primary][:, None]
                               + np.floor(rng.random((n, c)) * np.maximum(size, 1)[:, None]).astype(np.int64),
                               cfg.n_authors - 1)]
    anyone = rng.integers(0, cfg.n_authors, (n, c))
    followed = np.where((rng.random((n, c)) < 0.7) & (size[:, None] > 0), same, anyone)
    keys = np.unique(np.arange(n)[:, None].astype(np.int64) * cfg.n_authors + followed)
    return np.searchsorted(keys // cfg.n_authors, np.arange(n + 1)), keys % cfg.n_authors


def simulate_impressions(cfg, rng: np.random.Generator, members: Members, items: Items, offsets: np.ndarray,
                         followed: np.ndarray, tick: Callable[[int], None]) -> Impressions:
    k, window = cfg.n_topics, int(cfg.recency_window_days * DAY)
    base = int(items.created.min())
    end = cfg.start + cfg.days * DAY
    by_topic = _Index(items.topic, items.created, items.popularity, base)
    by_time = _Index(np.zeros(cfg.n_items, np.int64), items.created, items.popularity, base)
    by_author = _Index(items.author, items.created, np.ones(cfg.n_items), base)
    follow_keys = np.arange(cfg.n_members).repeat(np.diff(offsets)).astype(np.int64) * cfg.n_authors + followed

    log_pop = np.log(items.popularity)
    pop_z = (log_pop - log_pop.mean()) / log_pop.std()
    activity = rng.lognormal(-0.5 * cfg.activity_sigma**2, cfg.activity_sigma, cfg.n_members)
    active_share = (end - members.active_from) / (cfg.days * DAY)
    counts = rng.poisson(cfg.impressions_per_member * activity * active_share)

    parts = []
    for lo_m in range(0, cfg.n_members, cfg.chunk_members):
        hi_m = min(lo_m + cfg.chunk_members, cfg.n_members)
        member = np.arange(lo_m, hi_m).repeat(counts[lo_m:hi_m])
        m = len(member)
        start = members.active_from[member]
        time = start + np.floor(rng.random(m) * (end - start)).astype(np.int64)
        source = rng.choice(len(SOURCES), m, p=cfg.feed_mix)
        item = np.full(m, -1, np.int64)

        pick = source == 0  # a topic the member likes
        cum = np.cumsum(members.affinity[member[pick]], axis=1)
        topic = np.minimum((cum < rng.random(pick.sum())[:, None] * cum[:, -1:]).sum(1), k - 1)
        item[pick] = by_topic.pick(rng, *by_topic.window(topic, time[pick] - window, time[pick]), weighted=True)

        pick = source == 1  # an author the member follows; following nobody falls back to popular below
        if len(followed):
            degree = np.diff(offsets)[member[pick]]
            slot = offsets[member[pick]] + np.floor(rng.random(pick.sum()) * degree).astype(np.int64)
            author = followed[np.minimum(slot, len(followed) - 1)]
            got = by_author.pick(rng, *by_author.window(author, time[pick] - 2 * window, time[pick]), weighted=False)
            item[pick] = np.where(degree > 0, got, -1)

        zero = np.zeros(m, np.int64)
        lo, hi = by_time.window(zero, time - window, time)
        popular = by_time.pick(rng, lo, hi, weighted=True)
        recent = by_time.pick(rng, lo, hi, weighted=False)
        item = np.where(source == 3, recent, item)
        source = np.where((source < 2) & (item < 0), 2, source)  # nothing in that topic / author this week
        item = np.where(source == 2, popular, item)
        # Last resort (an empty week): anything published before the impression.
        anything = by_time.pick(rng, np.zeros(m, np.int64), hi, weighted=False)
        item = np.where(item < 0, anything, item)
        keep = item >= 0

        # One impression per (member, item): the first.
        member, item, time, source = member[keep], item[keep], time[keep], source[keep]
        order = np.lexsort((time, member))
        pair = member[order].astype(np.int64) * cfg.n_items + item[order]
        _, first = np.unique(pair, return_index=True)
        sel = order[np.sort(first)]
        member, item, time, source = member[sel], item[sel], time[sel], source[sel]

        connected = np.isin(member.astype(np.int64) * cfg.n_authors + items.author[item], follow_keys)
        affinity = members.affinity[member, items.topic[item]]
        age_days = (time - items.created[item]) / DAY
        logit = (cfg.base_logit + cfg.w_affinity * np.log(k * affinity + 0.05) + cfg.w_popularity * pop_z[item]
                 - cfg.w_recency * age_days / cfg.recency_tau_days + cfg.w_connection * connected)
        probability = 1.0 / (1.0 + np.exp(-logit))
        engaged = rng.random(len(member)) < probability
        parts.append((member, item, time, engaged, probability.astype(np.float32), source.astype(np.int8),
                      connected))
        tick(hi_m - lo_m)

    fields = [np.concatenate(column) for column in zip(*parts)]
    order = np.argsort(fields[2], kind="stable")  # by time; ties keep member order
    return Impressions(*[f[order] for f in fields])
