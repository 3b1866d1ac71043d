"""Prepared feed datasets: builders that turn tables into a store of records (ff_jax.data.store),
read back as random-access sources by `open_prepared` and fed to `ff_jax.data.pipeline`.

Two names per dataset, one preparation: `feed_world` / `movielens_feed` / `tables` give the splits
train / validation / test of member examples, and `<name>_corpus` the split `corpus`, one record per
item. Both read the same store, prepared by one deterministic pass (load -> temporal split -> fit the
quantiser on the training split -> render pieces -> write), so their prompts agree.

Corpus records also carry each item's creation time and author, for the serving catalogue (and
its `blocked_authors` filter): `created_at` in unix seconds, from the items table's `created_at`
column (MovieLens: 1 January 00:00 UTC of the release year, the finest date its files give), or
UNKNOWN_TIME; `author`, the first of AUTHOR_COLUMNS the items table has (feed_world: the author's
name), or "" when unknown. Neither is ever guessed.

Records hold text, not tokens: the token budget belongs to the tokenizer and model chosen at
training time, so truncation happens in the pipeline. The prompt format (markers, how an item
prompt ends), the template, the schema and the quantiser travel in the dataset's metadata.

Versions before 2.0.0 were TFDS array_record files holding every example's whole member prompt as
text: 5 KB an example, and TFDS's writer buffered them in memory, then needed TensorFlow to spill.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from ff_jax.data import feed_world
# The machinery, under the names callers have always used (ff_jax.data.prepared.open_prepared, ...).
from ff_jax.data.feed_builder import (AUTHOR_COLUMNS, CORPUS_VERSION, NUMBER_MODES, UNKNOWN_TIME, VERSION,
                                     FeedConfig, Prepared, _FeedBuilder, is_prepared, item_authors,
                                     item_created_at, open_prepared, prepare, store_root)
from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.prepare_engine import PrepareConfig
from ff_jax.data.prompts import PromptTemplate
from ff_jax.data.tables import FeedTables
from ff_jax.data.tables_builder import TABLE_BUILDERS

# --------------------------------------------------------------------------- the datasets

FEED_WORLD_SIZES = ("tiny", "small", "medium", "1m")  # ff_jax.data.feed_world.SIZES
MOVIELENS_TEMPLATE = PromptTemplate(item_fields=("rating_count", "mean_rating", "text"), max_history_items=50)
# "100k_titles": history items by their text alone, without the percentile tags (about 20 BPE tokens
# each instead of 30), so the same member budget holds half as much again of the history.
MOVIELENS_CONFIGS = [
    FeedConfig(name="100k", template=MOVIELENS_TEMPLATE, description="MovieLens-100k"),
    FeedConfig(name="100k_titles", template=dataclasses.replace(MOVIELENS_TEMPLATE, history_fields=("text",)),
               description="MovieLens-100k, history items by their text alone")]


def _feed_world_configs():
    return [FeedConfig(name=size, description=f"feed_world simulator, size {size!r}", world={"size": size, "seed": 0})
            for size in FEED_WORLD_SIZES]


class _FeedWorldTables:
    def _load_tables(self) -> FeedTables:
        return feed_world.generate(feed_world.feed_world_config(**self.builder_config.world)).tables


class _MovieLensTables:
    def _load_tables(self) -> FeedTables:
        return load_movielens_100k(test_fraction=self.builder_config.test_fraction,
                                   validation_fraction=self.builder_config.validation_fraction)

    def _item_created_at(self, items) -> np.ndarray:
        """1 January 00:00 UTC of the release year ("" year: UNKNOWN_TIME); the files hold no finer date."""
        year = items["year"].astype(str)
        known = year.str.fullmatch(r"\d{4}").to_numpy()
        dates = pd.to_datetime(year.where(known, "1970") + "-01-01", utc=True)
        seconds = (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return np.where(known, seconds.to_numpy(np.int64), UNKNOWN_TIME)


class FeedWorld(_FeedWorldTables, _FeedBuilder):
    """Member examples from the feed_world simulator (train / validation / test)."""

    name = "feed_world"
    BUILDER_CONFIGS = _feed_world_configs()


class FeedWorldCorpus(_FeedWorldTables, _FeedBuilder):
    """Every item of the feed_world simulator with its prompt (split `corpus`)."""

    name = "feed_world_corpus"
    BUILDER_CONFIGS = _feed_world_configs()


class MovielensFeed(_MovieLensTables, _FeedBuilder):
    """Member examples from MovieLens-100k (ratings >= 4 engaged; train / validation / test)."""

    name = "movielens_feed"
    BUILDER_CONFIGS = MOVIELENS_CONFIGS


class MovielensFeedCorpus(_MovieLensTables, _FeedBuilder):
    """Every MovieLens-100k movie with its prompt (split `corpus`)."""

    name = "movielens_feed_corpus"
    BUILDER_CONFIGS = MOVIELENS_CONFIGS


# Every dataset by name; `tables` / `tables_corpus` (your own files) come from ff_jax.data.tables_builder.
BUILDERS = {**{cls.name: cls for cls in (FeedWorld, FeedWorldCorpus, MovielensFeed, MovielensFeedCorpus)},
            **TABLE_BUILDERS}


def build(name: str, config: str | FeedConfig, data_dir: str | Path,
          engine: PrepareConfig | None = None) -> _FeedBuilder:
    """Prepare one dataset (and so its corpus) into `data_dir`; a finished one is reused."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](config=config, data_dir=data_dir)
    builder.download_and_prepare(engine)
    return builder
