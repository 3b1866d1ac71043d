"""The data a training run reads: a prepared feed dataset (ff_jax.data.prepared) turned into grain batches.

Training batches come from the dataset's `train` split (ff_jax.data.pipeline.train_batches, each
process reading its own slice). Periodic validation uses the `validation` split, held out by time:
  - pair batches: each validation member with its first held-out target as the positive (item
    prompt from the corpus) → loss and in-batch accuracy;
  - member and corpus embedding batches → recall@K of the held-out targets over the whole corpus,
    the member's engaged history excluded from the ranking (the evaluation protocol).
Validation batches are the same on every process (full, unsliced), so recall needs no gather.
"""

import dataclasses
from typing import Optional

import gin

from ff_jax.data.pipeline import BatchConfig, LogQ, as_text, embedding_batches, train_batches
from ff_jax.data.prepare_engine import PrepareConfig
from ff_jax.data.prompts import PromptFormat, PromptTemplate
from ff_jax.data.tables_options import TablesOptions


@dataclasses.dataclass
class Validation:
    pair_batches: list  # DualTowerBatch (ff_jax.data.batches)
    member_batches: list  # EmbeddingBatch; ids = user ids
    corpus_batches: list  # EmbeddingBatch; ids = item ids
    targets: dict  # user id -> set of held-out item ids
    exclude: dict  # user id -> set of item ids not to rank (engaged history)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FeedData:
    """A dataset prepared by ff_jax.data.prepared under `data_dir` (built there first when
    missing and `prepare` is true). `dataset` names the member-example builder; its corpus is the
    sibling builder `<dataset>_corpus`. `tokenizer`: "byte" (tests), a tokenizer path, or
    "checkpoint" (the pretrained model's own). dataset="tables": your own files in the folder
    `tables`, read with `tables_options`; the config is named by their content (`config` unused)."""

    data_dir: str
    dataset: str = "feed_world"
    config: str = "tiny"
    batch: BatchConfig = BatchConfig()
    tokenizer: str = "checkpoint"
    seed: int = 0
    prepare: bool = True
    validation_members: int = 256  # members used in periodic validation (0: no validation)
    validation_corpus: int = 0  # items ranked in validation (0: the whole corpus); targets always kept
    read_threads: int = 2
    numbers: Optional[str] = None  # "raw" / "absent": the builder config's variant for that ablation
    tables: Optional[str] = None  # dataset="tables": the folder of users / items / interactions files
    tables_options: Optional[TablesOptions] = None  # None: TablesOptions() with its gin bindings
    prepare_engine: Optional[PrepareConfig] = None  # where preparation renders text; None: PrepareConfig()
    tables_template: Optional[PromptTemplate] = None  # dataset="tables": None: PromptTemplate() with its bindings

    def __post_init__(self):
        # The gin-bound parts are built now, not when first used: a FeedData made while a run's
        # config is parsed (ff_jax.train.run.Run.open) keeps that config's values, whatever gin
        # holds later.
        if self.tables_options is None:
            object.__setattr__(self, "tables_options", TablesOptions())
        if self.prepare_engine is None:
            object.__setattr__(self, "prepare_engine", PrepareConfig())
        if self.tables_template is None and self.dataset == "tables":
            object.__setattr__(self, "tables_template", PromptTemplate())

    def _tables_config(self):
        from ff_jax.data.tables_builder import tables_config

        if not self.tables:
            raise ValueError("DATASET='tables' needs the folder of your files: --gin.TABLES=/path/to/folder")
        return tables_config(self.tables, self.tables_options, self.numbers, self.tables_template)

    @property
    def config_name(self) -> str:
        if self.dataset == "tables":
            return self._tables_config().name
        return f"{self.config}_{self.numbers}" if self.numbers else self.config

    def open_dataset(self, name: str):
        """(split sources, PromptFormat, info) of builder `name` under data_dir, built first when
        missing and `prepare` is set."""
        from ff_jax.data import prepared

        if self.dataset == "tables":  # `tables` or `tables_corpus`, keyed by the files' content
            from ff_jax.data.tables_builder import open_tables

            return open_tables(name, self._tables_config(), self.data_dir, self.prepare, self.prepare_engine)
        if self.prepare and not prepared.is_prepared(self.data_dir, name, self.config_name):
            config = self.config
            if self.numbers:  # the named config with numbers rendered another way
                known = {c.name: c for c in prepared.BUILDERS[name].BUILDER_CONFIGS}
                if self.config not in known:
                    raise ValueError(f"FeedData.config={self.config!r}: {name} has configs {sorted(known)}")
                config = dataclasses.replace(known[self.config], name=self.config_name, numbers=self.numbers)
            prepared.build(name, config, self.data_dir, self.prepare_engine)
        return prepared.open_prepared(self.data_dir, name, self.config_name)

    def prompt_format(self) -> PromptFormat:
        return self.open_dataset(self.dataset)[1]

    @property
    def segments(self) -> tuple[int, int]:
        """Prompts per row (S) of the member and item towers."""
        s = self.batch.max_segments if self.batch.mode == "packed" else 1
        return s, s

    def train_iterator(self, tokenizer, num_shards: int):
        sources, fmt, metadata = self.open_dataset(self.dataset)
        dataset = train_batches(sources["train"], tokenizer, fmt, self.batch, seed=self.seed,
                                num_shards=num_shards, read_threads=self.read_threads, log_q=_log_q(metadata))
        return iter(dataset)

    def validation(self, tokenizer, num_shards: int) -> Optional[Validation]:
        if self.validation_members <= 0:
            return None
        sources, fmt, metadata = self.open_dataset(self.dataset)
        corpus_source = self.open_dataset(f"{self.dataset}_corpus")[0]["corpus"]
        # Ids first, records only for the items kept: a corpus of 1M prompts is not held at once.
        ids = [as_text(corpus_source[i]["item_id"]) for i in range(len(corpus_source))]
        split = sources["validation"]
        members = [split[i] for i in range(min(self.validation_members, len(split)))]
        keep = range(len(ids))
        if self.validation_corpus:  # a fixed subset: every target, then the first items by id order
            needed = {as_text(t) for r in members for t in r["target_ids"]}
            others = [i for i, item in enumerate(ids) if item not in needed]
            keep = [i for i, item in enumerate(ids) if item in needed] + others[
                : max(self.validation_corpus - len(needed), 0)]
        corpus = [corpus_source[i] for i in keep]
        position = {item: i for i, item in enumerate(ids)}
        pairs = []
        for record in members:
            target = as_text(record["target_ids"][0])
            prompt = as_text(corpus_source[position[target]]["item_prompt"])
            pairs.append({**record, "positive_id": target, "positive_prompt": prompt})
        whole = dict(shard_index=0, shard_count=1, num_shards=num_shards, read_threads=self.read_threads)
        pair_batches = list(train_batches(pairs, tokenizer, fmt, self.batch, seed=0, num_epochs=1,
                                          log_q=_log_q(metadata), **whole))
        member_batches = list(embedding_batches(members, tokenizer, fmt, self.batch, tower="member", **whole))
        corpus_batches = list(embedding_batches(corpus, tokenizer, fmt, self.batch, tower="item", **whole))
        targets = {as_text(r["user_id"]): {as_text(t) for t in r["target_ids"]} for r in members}
        exclude = {as_text(r["user_id"]): {as_text(t) for t in r["engaged_history_ids"]} for r in members}
        return Validation(pair_batches, member_batches, corpus_batches, targets, exclude)


def _log_q(metadata: dict) -> Optional[LogQ]:
    """The items' training-positive shares, for the loss's logQ correction (validation pairs get the
    same as training, so their loss is the same function); None for preparations older than 1.1.0."""
    if "item_train_positives" not in metadata:
        return None
    return LogQ(metadata["item_train_positives"], metadata["corpus_size"])
