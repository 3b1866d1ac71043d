"""feed_world, part 1: members, authors and items with their profile fields and post text.

All vectorised numpy; strings are assembled with fancy indexing and one join per text length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ff_jax.data import feed_world_vocab as vocab

DAY = 86_400
TOPIC_NAMES = np.array([t[0] for t in vocab.TOPICS], dtype=object)
INDUSTRIES = np.array([t[1] for t in vocab.TOPICS], dtype=object)


def _strings(values) -> np.ndarray:
    return np.array(values, dtype=object)


def _cat(*parts: np.ndarray | str) -> np.ndarray:
    """Element-wise string concatenation of object arrays (and constants)."""
    out = parts[0] if isinstance(parts[0], np.ndarray) else _strings([parts[0]])
    for part in parts[1:]:
        out = out + part
    return out


def _pick_per_row(rng: np.random.Generator, table: list[list[str]], rows: np.ndarray, k: int) -> np.ndarray:
    """k distinct entries of table[rows[i]] per row (every list in `table` has the same length)."""
    width = len(table[0])
    flat = _strings([w for entry in table for w in entry])
    choice = np.argsort(rng.random((len(rows), width)), axis=1)[:, :k]
    return flat[rows[:, None] * width + choice]


@dataclass
class People:
    """Members or authors: profile strings plus their latent primary topic."""

    name: np.ndarray
    title: np.ndarray
    company: np.ndarray
    industry: np.ndarray
    skills: np.ndarray       # "a, b, c, d"
    seniority: np.ndarray
    headline: np.ndarray
    location: np.ndarray
    primary: np.ndarray      # topic index


def make_people(rng: np.random.Generator, n: int, primary: np.ndarray, secondary: np.ndarray) -> People:
    first = _strings(vocab.FIRST_NAMES)[rng.integers(0, len(vocab.FIRST_NAMES), n)]
    last = _strings(vocab.LAST_NAMES)[rng.integers(0, len(vocab.LAST_NAMES), n)]
    seniority = _strings(vocab.SENIORITY)[rng.choice(len(vocab.SENIORITY), n, p=vocab.SENIORITY_WEIGHTS)]
    roles = _pick_per_row(rng, [t[2] for t in vocab.TOPICS], primary, 1)[:, 0]
    managing = np.isin(seniority, ["Manager", "Director", "VP"])
    topic_title = _strings([name.title() for name in TOPIC_NAMES])[primary]
    title = np.where(managing, _cat(seniority, " of ", topic_title), _cat(seniority, " ", roles))
    company = _cat(_strings(vocab.COMPANY_HEADS)[rng.integers(0, len(vocab.COMPANY_HEADS), n)], " ",
                   _strings(vocab.COMPANY_TAILS)[rng.integers(0, len(vocab.COMPANY_TAILS), n)])
    own = _pick_per_row(rng, [t[3] for t in vocab.TOPICS], primary, 3)
    other = _pick_per_row(rng, [t[3] for t in vocab.TOPICS], secondary, 1)
    skills = _cat(own[:, 0], ", ", own[:, 1], ", ", own[:, 2], ", ", other[:, 0])
    headline = _cat(title, " at ", company, " | ", own[:, 0], " · ", own[:, 1])
    location = _strings(vocab.CITIES)[rng.integers(0, len(vocab.CITIES), n)]
    return People(_cat(first, " ", last), title, company, INDUSTRIES[primary], skills, seniority, headline,
                  location, primary)


def ids(prefix: str, n: int) -> np.ndarray:
    width = max(6, len(str(n)))
    return _strings([f"{prefix}{k:0{width}d}" for k in range(n)])


def topic_weights(rng: np.random.Generator, n_topics: int) -> np.ndarray:
    """Some topics are bigger than others (a fixed draw per seed)."""
    return rng.dirichlet(np.full(n_topics, 4.0))


@dataclass
class Members:
    frame: pd.DataFrame
    affinity: np.ndarray     # float32 [n, topics], rows sum to 1
    primary: np.ndarray
    is_new: np.ndarray       # joined during the last stretch of the window
    active_from: np.ndarray  # max(joined_at, window start)


def make_members(cfg, rng: np.random.Generator, weights: np.ndarray) -> Members:
    n, k = cfg.n_members, cfg.n_topics
    primary = rng.choice(k, n, p=weights)
    spread = rng.dirichlet(np.full(k, cfg.affinity_concentration), n)
    affinity = cfg.primary_topic_weight * np.eye(k)[primary] + (1 - cfg.primary_topic_weight) * spread
    masked = np.where(np.eye(k, dtype=bool)[primary], -1.0, affinity)
    secondary = masked.argmax(1)
    people = make_people(rng, n, primary, secondary)
    end = cfg.start + cfg.days * DAY
    is_new = rng.random(n) < cfg.new_member_fraction
    joined = np.where(is_new, cfg.start + cfg.days * DAY * rng.uniform(0.6, 0.95, n),
                      cfg.start - rng.uniform(0, 5 * 365 * DAY, n)).astype(np.int64)
    frame = pd.DataFrame({"user_id": ids("m", n), "name": people.name, "headline": people.headline,
                          "title": people.title, "company": people.company, "industry": people.industry,
                          "skills": people.skills, "seniority": people.seniority, "location": people.location,
                          "joined_at": joined})
    assert (joined < end).all()
    return Members(frame, affinity.astype(np.float32), primary, is_new, np.maximum(joined, cfg.start))


@dataclass
class Items:
    frame: pd.DataFrame
    topic: np.ndarray
    author: np.ndarray
    popularity: np.ndarray   # latent, heavy-tailed; the counts are noisy draws around it
    created: np.ndarray
    author_topic: np.ndarray


def _post_texts(cfg, rng: np.random.Generator, topic: np.ndarray, tick: Callable[[int], None]) -> np.ndarray:
    """Opener + two short sentences of topic / noise / filler words + two topic hashtags."""
    n, k = len(topic), cfg.n_topics
    words = [t[4] for t in vocab.TOPICS[:k]]
    width = min(len(w) for w in words)
    topic_words = _strings([w for entry in words for w in entry[:width]])
    filler = _strings(vocab.FILLER)
    tags = _strings(["#" + h for t in vocab.TOPICS[:k] for h in t[5]])
    lo, hi = cfg.words_per_item
    length = rng.integers(lo, hi + 1, n)
    texts = np.empty(n, dtype=object)
    for size in np.unique(length):
        rows = np.flatnonzero(length == size)
        m = len(rows)
        u = rng.random((m, size))
        other = rng.integers(0, k, (m, size))
        owner = np.where(u < cfg.topic_word_share, topic[rows, None], other)
        chosen = topic_words[owner * width + rng.integers(0, width, (m, size))]
        chosen = np.where(u < cfg.topic_word_share + cfg.noise_word_share, chosen,
                          filler[rng.integers(0, len(filler), (m, size))])
        half = size // 2
        chosen[:, half - 1] = chosen[:, half - 1] + "."
        chosen[:, -1] = chosen[:, -1] + "."
        opener = _strings(vocab.OPENERS)[rng.integers(0, len(vocab.OPENERS), m)]
        connector = _cat(_strings(vocab.CONNECTORS)[rng.integers(0, len(vocab.CONNECTORS), m)], ":")
        pair = np.argsort(rng.random((m, 3)), axis=1)[:, :2]
        hashtags = tags[topic[rows, None] * 3 + pair]
        table = np.column_stack([opener, chosen[:, :half], connector, chosen[:, half:], hashtags])
        texts[rows] = [" ".join(r) for r in table.tolist()]
        tick(m)
    return texts


def make_items(cfg, rng: np.random.Generator, weights: np.ndarray, tick: Callable[[int], None]) -> Items:
    n, k = cfg.n_items, cfg.n_topics
    author_topic = rng.choice(k, cfg.n_authors, p=weights)
    authors = make_people(rng, cfg.n_authors, author_topic, rng.integers(0, k, cfg.n_authors))
    author_reach = rng.lognormal(0.0, 1.0, cfg.n_authors)
    productivity = rng.lognormal(0.0, 1.0, cfg.n_authors)
    author = rng.choice(cfg.n_authors, n, p=productivity / productivity.sum())
    topic = np.where(rng.random(n) < cfg.author_on_topic, author_topic[author], rng.integers(0, k, n))
    created = (cfg.start - cfg.prehistory_days * DAY
               + rng.uniform(0, (cfg.days + cfg.prehistory_days) * DAY, n)).astype(np.int64)
    popularity = author_reach[author] * (rng.pareto(cfg.popularity_tail, n) + 1.0)
    views = np.floor(20 * popularity * rng.lognormal(0.0, 0.4, n))
    likes = rng.binomial(views.astype(np.int64), rng.beta(2, 40, n)).astype(float)
    comments = rng.binomial(likes.astype(np.int64), rng.beta(1.5, 12, n)).astype(float)
    post_type = _strings(vocab.POST_TYPES)[rng.choice(len(vocab.POST_TYPES), n, p=vocab.POST_TYPE_WEIGHTS)]
    media = _strings(vocab.MEDIA_TYPES)[rng.choice(len(vocab.MEDIA_TYPES), n, p=vocab.MEDIA_TYPE_WEIGHTS)]
    article = post_type == "article"
    media = np.where(article, "link", media)
    head = _pick_per_row(rng, [t[4][:20] for t in vocab.TOPICS], topic, 2)
    topic_title = _strings([name.title() for name in TOPIC_NAMES])[topic]
    article_title = np.where(article, _cat(topic_title, ": why ", head[:, 0], " and ", head[:, 1], " matter now"), "")
    source = _strings(vocab.ARTICLE_SOURCES)[rng.integers(0, len(vocab.ARTICLE_SOURCES), n)]
    text = _post_texts(cfg, rng, topic, tick)
    frame = pd.DataFrame({
        "item_id": ids("p", n), "text": text, "created_at": created, "post_type": post_type, "media_type": media,
        "author_name": authors.name[author], "author_headline": authors.headline[author],
        "author_company": authors.company[author], "author_industry": authors.industry[author],
        "author_title": authors.title[author], "article_title": article_title,
        "article_source": np.where(article, source, ""),
        "view_count": views, "like_count": likes, "comment_count": comments})
    return Items(frame, topic, author, popularity, created, author_topic)
