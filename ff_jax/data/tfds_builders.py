"""TFDS builders (array_record, no TensorFlow) for prompt datasets, prepared offline, read with
`tfds.data_source` / `builder.as_data_source()` and fed to `ff_jax.data.pipeline`.

Two builders per dataset, with the same configs:
- `feed_world` / `movielens_feed`: splits train / validation / test of member examples
  (EXAMPLE_FEATURES: member prompt parts, positive + hard-negative item prompts, cohort, ids,
  held-out targets for evaluation);
- `feed_world_corpus` / `movielens_feed_corpus`: split `corpus`, one prompt per item.
TFDS gives a builder config exactly one feature spec, and the configs of `feed_world` already
name its sizes, so the corpus (a different record shape) is a sibling builder rather than a split.
Both run the same deterministic preparation (load -> temporal split -> fit the quantiser on the
training split -> render), so their prompts agree; in one process it runs once (cached).

Corpus records also carry each item's creation time and author, for the serving catalogue (and
its `blocked_authors` filter): `created_at` in unix seconds, from the items table's `created_at`
column (MovieLens: 1 January 00:00 UTC of the release year, the finest date its files give), or
UNKNOWN_TIME; `author`, the first of AUTHOR_COLUMNS the items table has (feed_world: the author's
name), or "" when unknown. Neither is ever guessed.

Records hold text, not tokens: the token budget belongs to the tokenizer and model chosen at
training time, so truncation happens in the pipeline. The prompt format (markers, how an item
prompt ends), the template, the schema and the quantiser travel in the dataset's metadata.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import Counter
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tqdm.auto import tqdm

from ff_jax.data import feed_world
from ff_jax.data.movielens import load_movielens_100k
from ff_jax.data.prompts import PromptFormat, PromptRenderer, PromptTemplate
from ff_jax.data.quantizer import Quantizer, fit_on_training
from ff_jax.data.splits import EvalMember, Splits, TrainExample, temporal_split
from ff_jax.data.tables import FeedTables

VERSION = "1.1.0"  # of the member-example builders' records and metadata; an older preparation is prepared anew
CORPUS_VERSION = "1.2.0"  # of the corpus builders' records (1.2.0: created_at and author)
_text = tfds.features.Text
EXAMPLE_FEATURES = {
    "user_id": _text(), "cohort": _text(),  # "new" | "established"
    "timestamp": tfds.features.Scalar(dtype=np.int64),  # train: the positive's time; eval: first target's
    "member_prefix": _text(), "member_profile": tfds.features.Sequence(_text()),
    "member_history": tfds.features.Sequence(_text()),  # newest first
    "member_suffix": _text(),
    "positive_id": _text(), "positive_prompt": _text(),  # empty in validation / test
    "negative_ids": tfds.features.Sequence(_text()), "negative_prompts": tfds.features.Sequence(_text()),
    "target_ids": tfds.features.Sequence(_text()),  # eval: held-out positives; train: [positive_id]
    "engaged_history_ids": tfds.features.Sequence(_text()),  # eval: items removed from the ranking
}
CORPUS_FEATURES = {"item_id": _text(), "item_prompt": _text(),
                   "created_at": tfds.features.Scalar(dtype=np.int64), "author": _text()}
UNKNOWN_TIME = int(np.iinfo(np.int64).min)  # a corpus record's created_at when the tables do not give one
AUTHOR_COLUMNS = ("author_id", "author", "author_name")  # the items column naming an item's author, first found
NUMBER_MODES = ("quantile", "raw", "absent")  # the Quantizer modes: the numbers ablation


@dataclasses.dataclass
class FeedConfig(tfds.core.BuilderConfig):
    """A dataset variant: split protocol, prompt template, how numbers appear (the ablation), and
    for feed_world the simulator's settings (`world`, keyword arguments of FeedWorldConfig)."""

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
                "item_train_positives": dict(Counter(str(e.positive) for e in splits.train)),
                "corpus_size": len(splits.corpus_ids)}
    return Prepared(tables, splits, renderer, metadata)


class PromptRecords:
    """Renders the records of a prepared dataset (item prompts and history pieces once, vectorised)."""

    def __init__(self, prepared: Prepared, progress: bool):
        self.p, self.progress = prepared, progress
        items = prepared.tables.items
        self.item_prompt = dict(zip(items["item_id"].astype(str), prepared.renderer.item_prompts(items)))
        self.pieces = prepared.renderer.history_pieces(items)
        self.profiles = prepared.renderer.profiles(prepared.tables.users)

    def _member(self, user_id, history, engaged) -> dict:
        prompt = self.p.renderer.member_prompt(self.profiles.get(user_id, []), list(history),
                                               [bool(e) for e in engaged], self.pieces)
        return {"member_prefix": prompt.prefix, "member_profile": prompt.profile,
                "member_history": prompt.history, "member_suffix": prompt.suffix}

    def train(self, example: TrainExample) -> dict:
        return {"user_id": example.user_id, "cohort": example.cohort, "timestamp": int(example.timestamp),
                **self._member(example.user_id, example.history, example.history_engaged),
                "positive_id": example.positive, "positive_prompt": self.item_prompt[example.positive],
                "negative_ids": list(example.hard_negatives),
                "negative_prompts": [self.item_prompt[i] for i in example.hard_negatives],
                "target_ids": [example.positive], "engaged_history_ids": []}

    def evaluation(self, member: EvalMember) -> dict:
        return {"user_id": member.user_id, "cohort": member.cohort, "timestamp": int(member.timestamp),
                **self._member(member.user_id, member.history, member.history_engaged),
                "positive_id": "", "positive_prompt": "", "negative_ids": [], "negative_prompts": [],
                "target_ids": list(member.targets), "engaged_history_ids": member.engaged_history}

    def examples(self, split: str) -> Iterator[tuple[str, dict]]:
        rows = getattr(self.p.splits, split)
        render = self.train if split == "train" else self.evaluation
        for i, row in enumerate(tqdm(rows, desc=f"{self.p.tables.name} {split} prompts", unit="example",
                                     disable=not self.progress, mininterval=1.0, leave=False)):
            yield f"{i:09d}", render(row)

    def corpus(self, created_at: np.ndarray) -> Iterator[tuple[str, dict]]:
        """One record per item; `created_at` int64 [items] aligned with the items table."""
        authors = item_authors(self.p.tables.items)
        for i, (item_id, prompt) in enumerate(self.item_prompt.items()):
            yield f"{i:09d}", {"item_id": item_id, "item_prompt": prompt, "created_at": int(created_at[i]),
                               "author": authors[i]}


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


class _FeedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery; subclasses say where the tables come from and which record shape they write."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {"1.0.0": "First release.",
                     "1.1.0": "Metadata counts each item's training positives (for the logQ correction)."}
    CORPUS = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.CORPUS:  # the corpus records changed shape on their own (CORPUS_VERSION)
            cls.VERSION = tfds.core.Version(CORPUS_VERSION)
            cls.RELEASE_NOTES = {**cls.RELEASE_NOTES, "1.2.0": "Corpus records carry created_at and author."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS's own lookup goes through `importlib_resources` (an etils extra that is not installed)
        # for classes inside a package; the source file is all it needs.
        return epath.Path(inspect.getfile(cls))

    def _load_tables(self) -> FeedTables:
        raise NotImplementedError

    def _item_created_at(self, items) -> np.ndarray:
        """Each item's creation time (int64 unix s, UNKNOWN_TIME when not known), aligned with `items`."""
        return item_created_at(items)

    # TFDS prints these two lines to stdout whatever the verbosity; here they are INFO logs, shown
    # with `--verbosity=0` (ff_jax.verbosity).
    def _log_download_bytes(self) -> None:
        logging.info("preparing %s/%s into %s", self.name, self.builder_config.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("prepared %s", self.data_dir)

    def _info(self) -> tfds.core.DatasetInfo:
        features = CORPUS_FEATURES if self.CORPUS else EXAMPLE_FEATURES
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=tfds.features.FeaturesDict(features),
                                     metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is local: a package folder or the simulator
        prepared = _prepared(type(self).__name__.replace("Corpus", ""), self.builder_config, self._load_tables)
        self.info.metadata.update(json.loads(json.dumps(prepared.metadata)))
        records = PromptRecords(prepared, progress=True)
        if self.CORPUS:
            return {"corpus": records.corpus(self._item_created_at(prepared.tables.items))}
        _check_splits(prepared, self.builder_config)
        return {split: records.examples(split) for split in ("train", "validation", "test")}

    def _generate_examples(self):  # the generators come from _split_generators
        raise NotImplementedError


def _check_splits(prepared: Prepared, config: FeedConfig) -> None:
    """TFDS cannot write an empty split; say which one and why instead of its bare assertion."""
    positives = prepared.tables.interactions.loc[prepared.tables.interactions["engaged"]]
    most = int(positives.drop_duplicates(["user_id", "item_id"])["user_id"].value_counts().max()) if len(
        positives) else 0
    for split, fraction in (("train", None), ("validation", config.validation_fraction),
                            ("test", config.test_fraction)):
        if not len(getattr(prepared.splits, split)):
            need = f"at least {int(np.ceil(1 / fraction))} engaged items for one {split} target" if fraction else \
                "engaged items before their held-out ones"
            raise ValueError(f"{prepared.tables.name}: the {split} split is empty: a member needs {need} "
                             f"(the most any member has is {most}); add interactions, or change "
                             "test_fraction / validation_fraction")


_CACHE: dict[tuple, Prepared] = {}


def _prepared(family: str, config: FeedConfig, load) -> Prepared:
    """Dataset and corpus builders of one config share one preparation per process."""
    key = (family, repr(config))
    if key not in _CACHE:
        _CACHE.clear()  # keep at most one dataset's tables in memory
        _CACHE[key] = prepare(load(), config)
    return _CACHE[key]


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
    CORPUS = True


class MovielensFeed(_MovieLensTables, _FeedBuilder):
    """Member examples from MovieLens-100k (ratings >= 4 engaged; train / validation / test)."""

    name = "movielens_feed"
    BUILDER_CONFIGS = [FeedConfig(name="100k", template=MOVIELENS_TEMPLATE, description="MovieLens-100k")]


class MovielensFeedCorpus(_MovieLensTables, _FeedBuilder):
    """Every MovieLens-100k movie with its prompt (split `corpus`)."""

    name = "movielens_feed_corpus"
    BUILDER_CONFIGS = [FeedConfig(name="100k", template=MOVIELENS_TEMPLATE, description="MovieLens-100k")]
    CORPUS = True


BUILDERS = {cls.name: cls for cls in (FeedWorld, FeedWorldCorpus, MovielensFeed, MovielensFeedCorpus)}


def build(name: str, config: str | FeedConfig, data_dir: str | Path) -> tfds.core.DatasetBuilder:
    """Prepare one dataset into `data_dir` (array_record files); a finished one is reused."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
    builder = BUILDERS[name](config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


def is_prepared(data_dir: str | Path, name: str, config: str) -> bool:
    """Whether `config` of builder `name` is prepared under data_dir at its current version (VERSION,
    or CORPUS_VERSION for a corpus: an older version's records lack what this code reads, so they
    are prepared anew)."""
    version = CORPUS_VERSION if name.endswith("_corpus") else VERSION  # corpora are `<dataset>_corpus`
    return (Path(data_dir) / name / config / version / "dataset_info.json").exists()


def open_prepared(data_dir: str | Path, name: str, config: str) -> tuple[dict, PromptFormat, dict]:
    """(split -> data source, prompt format, metadata) of a prepared dataset, newest version."""
    root = Path(data_dir) / name / config
    versions = sorted((p for p in root.glob("*") if (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")))
    if not versions:
        raise FileNotFoundError(f"{root}: no prepared dataset here; run "
                                f"`ff_jax.data.tfds_builders.build({name!r}, {config!r}, {str(data_dir)!r})`")
    builder = tfds.builder_from_directory(str(versions[-1]))
    metadata = dict(builder.info.metadata)
    return builder.as_data_source(), PromptFormat.from_dict(metadata["prompt_format"]), metadata


# `tables` / `tables_corpus` (your own files) subclass _FeedBuilder and add themselves to BUILDERS.
from ff_jax.data import tables_builder  # noqa: E402,F401
