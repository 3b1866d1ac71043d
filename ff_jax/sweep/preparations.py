"""The dataset variants a sweep file's `prepare = NAME` can build: numbers quantised / raw / absent,
history from positives or every impression. PREPARATIONS maps each NAME to the function that
builds the variant a run's `[variants.X.data]` asks for (ff_jax.sweep.datasets calls them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Optional


def compact_paths(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> tuple[Path, str, str, Path]:
    """(DATA_DIR, DATASET_CONFIG, the config built (with _<numbers>), its tokenizer) of compact feed_world."""
    from ff_jax.data.compact_feed_world import CONFIG_NAME

    root = data_dir / "compact_feed_world"
    config = CONFIG_NAME + (f"_{history}" if history else "")
    built = config + (f"_{numbers}" if numbers else "")
    return root, config, built, root / ("tokenizer.json" if built == CONFIG_NAME else f"tokenizer_{built}.json")


def _prepare_compact_feed_world(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> None:
    """feed_world "tiny" with compact prompts (ff_jax.data.compact_feed_world) in the variant asked
    for, with a word-level tokenizer fitted to that variant's own prompts (raw counts are words too)."""
    from ff_jax.data import compact_feed_world, prepared

    root, _, built, tokenizer = compact_paths(data_dir, numbers, history)
    if tokenizer.exists() and all(prepared.is_prepared(root, n, built) for n in ("feed_world", "feed_world_corpus")):
        return
    if built == compact_feed_world.CONFIG_NAME:
        compact_feed_world.prepare(root)
        return
    base = {c.name: c for c in prepared.FeedWorld.BUILDER_CONFIGS}["tiny"]
    template = dataclasses.replace(compact_feed_world.COMPACT, history_source=history or "positives")
    variant = dataclasses.replace(base, name=built, template=template, numbers=numbers or "quantile")
    for name in ("feed_world", "feed_world_corpus"):
        prepared.build(name, variant, root)
    corpus = prepared.open_prepared(root, "feed_world_corpus", built)[0]["corpus"]
    compact_feed_world.fit_word_tokenizer([corpus[i]["item_prompt"] for i in range(len(corpus))], tokenizer)


def _prepare_movielens(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> None:
    """MovieLens-100k with all rated films in the history ("100k_impressions"); the plain and
    numbers variants FeedData prepares itself on first use."""
    from ff_jax.data import prepared

    if not history:
        return
    built = f"100k_{history}" + (f"_{numbers}" if numbers else "")
    base = prepared.MovielensFeed.BUILDER_CONFIGS[0]
    variant = dataclasses.replace(base, name=built, numbers=numbers or "quantile",
                                  template=dataclasses.replace(base.template, history_source=history))
    for name in ("movielens_feed", "movielens_feed_corpus"):
        prepared.build(name, variant, data_dir)


# `prepare = NAME` in a sweep file: (data_dir, numbers, history_source) -> None, building the
# dataset variant a run's [variants.X.data] asks for (a prepared one is reused).
PREPARATIONS: dict[str, Callable[[Path, Optional[str], Optional[str]], None]] = {
    "compact_feed_world": _prepare_compact_feed_world, "movielens": _prepare_movielens}
