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
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from absl import logging

from ff_jax.data import feed_world
from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.prepare_engine import PrepareConfig
from ff_jax.data.prompts import PromptFormat, PromptRenderer, PromptTemplate
from ff_jax.data.quantizer import Quantizer, fit_on_training
from ff_jax.data.splits import Splits, temporal_split
from ff_jax.data.store import STORE_VERSION, StoreInput, is_complete, write_store
from ff_jax.data.store_records import open_store
from ff_jax.data.tables import FeedTables

VERSION = CORPUS_VERSION = STORE_VERSION  # a preparation of an older version is prepared anew
UNKNOWN_TIME = int(np.iinfo(np.int64).min)  # a corpus record's created_at when the tables do not give one
AUTHOR_COLUMNS = ("author_id", "author", "author_name")  # the items column naming an item's author, first found
NUMBER_MODES = ("quantile", "raw", "absent")  # the Quantizer modes: the numbers ablation


@dataclasses.dataclass
class FeedConfig:
    """A dataset variant, named `name`: split protocol, prompt template, how numbers appear (the
    ablation), and for feed_world the simulator's settings (`world`, keyword arguments of FeedWorldConfig)."""

    name: str = ""
    description: str = ""
    template: PromptTemplate = PromptTemplate()
    numbers: str = "quantile"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    new_quantile: float = 0.25
    max_hard_negatives: int = 2
    world: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.numbers not in NUMBER_MODES:
            raise ValueError(f"FeedConfig.numbers must be one of {NUMBER_MODES}, got {self.numbers!r}")


@dataclasses.dataclass
class Prepared:
    """Everything the records are rendered from."""

    tables: FeedTables
    splits: Splits
    renderer: PromptRenderer
    metadata: dict


def _number_renderer(tables: FeedTables, splits: Splits, mode: str) -> Quantizer:
    """The quantiser, fitted on what the training split uses (in every mode, so the metadata always
    holds it; "absent" renders no numbers)."""
    return fit_on_training(tables, splits, mode=mode)


def prepare(tables: FeedTables, config: FeedConfig, progress: bool = True) -> Prepared:
    splits = temporal_split(tables, test_fraction=config.test_fraction,
                            validation_fraction=config.validation_fraction, new_quantile=config.new_quantile,
                            max_hard_negatives=config.max_hard_negatives, progress=progress)
    numbers = _number_renderer(tables, splits, config.numbers)
    renderer = PromptRenderer(tables.schema, config.template, numbers)
    metadata = {"prompt_format": renderer.format().to_dict(), "template": dataclasses.asdict(config.template),
                "schema": tables.schema.to_dict(), "numbers": config.numbers,
                "quantizer": numbers.to_dict(),
                "splits": dict(splits.settings), "source": tables.name,
                # How often each item is a training positive: the sampling probabilities of in-batch
                # negatives, for the loss's logQ correction (ff_jax.data.pipeline.LogQ).
                "item_train_positives": _train_positive_counts(tables, splits),
                "corpus_size": len(splits.corpus_ids)}
    return Prepared(tables, splits, renderer, metadata)


def _train_positive_counts(tables: FeedTables, splits: Splits) -> dict[str, int]:
    """item_id -> how many training examples have it as their positive."""
    rows = splits.columns.timeline[splits.columns.train_at]
    counts = tables.interactions["item_id"].iloc[rows].value_counts(sort=False)
    return {str(item): int(n) for item, n in counts.items()}


def item_created_at(items) -> np.ndarray:
    """int64 unix seconds of the items table's `created_at` column, UNKNOWN_TIME where it is missing."""
    if "created_at" not in items:
        return np.full(len(items), UNKNOWN_TIME, np.int64)
    values = items["created_at"].astype("Float64") if items["created_at"].dtype == object else items["created_at"]
    return np.where(values.isna().to_numpy(), UNKNOWN_TIME, values.fillna(0).to_numpy(np.int64))


def item_authors(items) -> list[str]:
    """Each item's author from the first AUTHOR_COLUMNS column of the items table ("" when unknown)."""
    column = next((c for c in AUTHOR_COLUMNS if c in items), None)
    if column is None:
        return [""] * len(items)
    return ["" if value is None or value != value else str(value) for value in items[column].tolist()]


class _FeedBuilder:
    """Prepares one dataset config into `<data_dir>/<dataset>/<config>/<VERSION>`; subclasses say where
    the tables come from (`_load_tables`). `<dataset>_corpus` builders read the same preparation."""

    name = ""
    BUILDER_CONFIGS: list[FeedConfig] = []

    def __init__(self, config: str | FeedConfig, data_dir: str | Path):
        if isinstance(config, str):
            known = {c.name: c for c in self.BUILDER_CONFIGS}
            if config not in known:
                raise ValueError(f"{self.name} has no config {config!r}; it has {sorted(known)}")
            config = known[config]
        self.builder_config = config
        self.data_dir = store_root(data_dir, self.name, config.name)

    def _load_tables(self) -> FeedTables:
        raise NotImplementedError

    def _item_created_at(self, items) -> np.ndarray:
        """Each item's creation time (int64 unix s, UNKNOWN_TIME when not known), aligned with `items`."""
        return item_created_at(items)

    def download_and_prepare(self, engine: PrepareConfig | None = None) -> None:
        """Prepares the dataset unless a complete preparation of this version is there already;
        `engine` renders its text (None: PrepareConfig() as gin binds it)."""
        if is_complete(self.data_dir):
            return
        logging.info("preparing %s/%s into %s", self.name, self.builder_config.name, self.data_dir)
        tables = self._load_tables()
        prepared = prepare(tables, self.builder_config)
        _check_splits(prepared, self.builder_config)
        write_store(StoreInput(tables, prepared.splits, prepared.renderer, prepared.metadata,
                               self._item_created_at(tables.items), item_authors(tables.items)), self.data_dir,
                    engine=engine or PrepareConfig())


def store_root(data_dir: str | Path, name: str, config: str) -> Path:
    """Where a dataset's preparation lives; `<dataset>_corpus` shares its dataset's."""
    dataset = name[: -len("_corpus")] if name.endswith("_corpus") else name
    return Path(data_dir) / dataset / config / STORE_VERSION


def _check_splits(prepared: Prepared, config: FeedConfig) -> None:
    """An empty split cannot be trained or evaluated on: say which one and why."""
    for split, fraction in (("train", None), ("validation", config.validation_fraction),
                            ("test", config.test_fraction)):
        if not prepared.splits.count(split):
            inter = prepared.tables.interactions
            positives = inter.loc[inter["engaged"]]
            most = int(positives.drop_duplicates(["user_id", "item_id"])["user_id"].value_counts().max()) if len(
                positives) else 0
            need = f"at least {int(np.ceil(1 / fraction))} engaged items for one {split} target" if fraction else \
                "engaged items before their held-out ones"
            raise ValueError(f"{prepared.tables.name}: the {split} split is empty: a member needs {need} "
                             f"(the most any member has is {most}); add interactions, or change "
                             "test_fraction / validation_fraction")


# --------------------------------------------------------------------------- the datasets

FEED_WORLD_SIZES = ("tiny", "small", "medium", "1m")  # ff_jax.data.feed_world.SIZES
MOVIELENS_TEMPLATE = PromptTemplate(item_fields=("rating_count", "mean_rating", "text"), max_history_items=50)


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
    BUILDER_CONFIGS = [FeedConfig(name="100k", template=MOVIELENS_TEMPLATE, description="MovieLens-100k")]


class MovielensFeedCorpus(_MovieLensTables, _FeedBuilder):
    """Every MovieLens-100k movie with its prompt (split `corpus`)."""

    name = "movielens_feed_corpus"
    BUILDER_CONFIGS = [FeedConfig(name="100k", template=MOVIELENS_TEMPLATE, description="MovieLens-100k")]


BUILDERS = {cls.name: cls for cls in (FeedWorld, FeedWorldCorpus, MovielensFeed, MovielensFeedCorpus)}


def build(name: str, config: str | FeedConfig, data_dir: str | Path,
          engine: PrepareConfig | None = None) -> _FeedBuilder:
    """Prepare one dataset (and so its corpus) into `data_dir`; a finished one is reused."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](config=config, data_dir=data_dir)
    builder.download_and_prepare(engine)
    return builder


def is_prepared(data_dir: str | Path, name: str, config: str) -> bool:
    """Whether `config` of dataset `name` (or of its `_corpus`) is prepared under data_dir at this
    version (an older version's files are not read: they are prepared anew)."""
    return is_complete(store_root(data_dir, name, config))


def open_prepared(data_dir: str | Path, name: str, config: str) -> tuple[dict, PromptFormat, dict]:
    """(split -> data source, prompt format, metadata) of a prepared dataset: splits train /
    validation / test, or `corpus` for a `<dataset>_corpus` name."""
    root = store_root(data_dir, name, config)
    if not is_complete(root):
        raise FileNotFoundError(f"{root}: no prepared dataset here; run "
                                f"`ff_jax.data.prepared.build({name!r}, {config!r}, {str(data_dir)!r})`")
    splits, corpus, metadata = open_store(root)
    sources = {"corpus": corpus} if name.endswith("_corpus") else splits
    return sources, PromptFormat.from_dict(metadata["prompt_format"]), metadata


# `tables` / `tables_corpus` (your own files) subclass _FeedBuilder and add themselves to BUILDERS.
from ff_jax.data import tables_builder  # noqa: E402,F401
