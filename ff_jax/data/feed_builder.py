"""The machinery of a prepared dataset: a FeedConfig (one variant), the builder that prepares it
into a store (`_FeedBuilder`), and `is_prepared` / `open_prepared` to read a preparation back.

The named datasets (feed_world, movielens_feed, tables) and `build` are in ff_jax.data.prepared;
this module knows none of them, so each dataset's module can subclass `_FeedBuilder` from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from absl import logging

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
