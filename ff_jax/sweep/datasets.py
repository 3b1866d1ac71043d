"""The dataset variants a sweep's runs read: `prepare = NAME` in a sweep file builds the variant a
run's `[variants.X.data]` asks for (numbers quantised / raw / absent, history from positives or
every impression), and `data_bindings` points a run's training at it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # annotations only: sweep_file imports PREPARATIONS from here
    from ff_jax.sweep.sweep_file import Sweep, Variant


def _compact_paths(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> tuple[Path, str, str, Path]:
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

    root, _, built, tokenizer = _compact_paths(data_dir, numbers, history)
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


def _data_key(variant: Variant) -> tuple[Optional[str], Optional[str]]:
    return variant.data.get("numbers"), variant.data.get("history_source")


def data_bindings(sweep: Sweep, variant: Variant, data_dir: Path) -> dict[str, Any]:
    """The bindings that point a run at its data (computed, nothing prepared: --dry_run uses them)."""
    numbers, history = _data_key(variant)
    if sweep.prepare == "compact_feed_world":
        root, config, _, tokenizer = _compact_paths(data_dir, numbers, history)
        out: dict[str, Any] = {"DATA_DIR": str(root), "TOKENIZER": str(tokenizer), "DATASET_CONFIG": config}
    elif sweep.prepare == "movielens":
        out = {"DATA_DIR": str(data_dir), "DATASET_CONFIG": "100k" + (f"_{history}" if history else "")}
    else:
        out = {"DATA_DIR": str(data_dir)}
    return {**out, **({"FeedData.numbers": numbers} if numbers else {})}


def prepare_data(sweep: Sweep, data_dir: Path, log: Callable[[str], None] = print) -> None:
    """Prepares every dataset variant the sweep's runs read (each once; a prepared one is reused)."""
    if not sweep.prepare:
        return
    for numbers, history in dict.fromkeys(_data_key(v) for v in sweep.variants):
        log(f"preparing {sweep.prepare} (numbers {numbers or 'quantile'}, history {history or 'positives'}) "
            f"under {data_dir}")
        PREPARATIONS[sweep.prepare](data_dir, numbers, history)
