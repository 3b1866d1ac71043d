"""grain pipelines from prompt records (prepared sources, or any random-access sequence of dicts)
to the typed batches of ff_jax.data.batches (docs/contracts.md): tokenise + fit to the token
budgets, pack / pad / bucket, batch with a leading shard axis N.

Every process reads its own slice of the records (`shard_index::shard_count`, by default
jax.process_index()::jax.process_count()). Shuffling is grain's index shuffle under `seed`, so a
pipeline is a pure function of (records, seed, config), and `iterator.get_state()` /
`set_state()` (or orbax's grain checkpoint handler) resume it mid-epoch exactly.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Sequence

import gin
import grain
import numpy as np

from ff_jax.data.batches import DualTowerBatch, EmbeddingBatch, stack_shards
from ff_jax.data.packing import (Batcher, DualTowerBatcher, OneTowerBatcher, PackedBatchIterDataset, RowSpec,
                                 state_decode, state_encode)
from ff_jax.data.prompts import PromptFormat, fit_item_tokens, fit_member_tokens

MODES = ("packed", "padded", "bucketed")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Shapes of the batches. `examples_per_shard` is B/N; every prompt is cut to its budget
    (BOS/EOS included), and no budget may exceed `length` (L). In packed mode `member_rows` /
    `item_rows` default to the fewest rows that hold every prompt at its budget (`rows_for`);
    `suggest_rows` picks fewer from the lengths actually seen."""

    examples_per_shard: int = 8
    length: int = 1024
    member_budget: int | None = None  # None: length
    item_budget: int | None = None  # None: length
    num_hard_negatives: int = 1
    mode: str = "packed"
    member_rows: int | None = None
    item_rows: int | None = None
    max_segments: int = 8
    strategy: str = "first_fit"
    bucket_boundaries: tuple[int, ...] = (128, 256, 512, 1024)
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"BatchConfig.mode must be one of {MODES}, got {self.mode!r}")
        for name in ("examples_per_shard", "length", "member_budget", "item_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"BatchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_hard_negatives < 0:
            raise ValueError(f"BatchConfig.num_hard_negatives must be >= 0, got {self.num_hard_negatives}")
        longest = self.bucket_boundaries[-1] if self.mode == "bucketed" else self.length
        for name in ("member_budget", "item_budget"):
            value = getattr(self, name) or self.length
            if value > longest:
                raise ValueError(f"BatchConfig.{name}={value} exceeds the longest row ({longest} tokens)")

    @property
    def member_tokens(self) -> int:
        return self.member_budget or self.length

    @property
    def item_tokens(self) -> int:
        return self.item_budget or self.length

    def rows_for(self, prompts: int, budget: int) -> int:
        """Packed rows that hold `prompts` prompts of up to `budget` tokens whatever their lengths:
        the default, so a step never carries examples over and no row is spent on one short prompt."""
        per_row = max(1, min(self.max_segments, self.length // budget))
        return -(-prompts // per_row)

    def row_specs(self, length: int | None = None) -> tuple[RowSpec, RowSpec]:
        """Member and item RowSpecs (padded and bucketed: one prompt per row)."""
        b, items = self.examples_per_shard, 1 + self.num_hard_negatives
        if self.mode == "packed":
            member_rows = self.member_rows or self.rows_for(b, self.member_tokens)
            item_rows = self.item_rows or self.rows_for(b * items, self.item_tokens)
            return (RowSpec(member_rows, self.length, self.max_segments, self.strategy),
                    RowSpec(item_rows, self.length, self.max_segments, self.strategy))
        length = length or self.length
        return RowSpec(b, length), RowSpec(b * items, length)

    def tower_spec(self, tower: str, length: int | None = None) -> RowSpec:
        """Rows of a one-tower (embedding) batch: `member_rows` / `item_rows` when packed."""
        b = self.examples_per_shard
        if self.mode == "packed":
            rows = self.member_rows if tower == "member" else self.item_rows
            budget = self.member_tokens if tower == "member" else self.item_tokens
            return RowSpec(rows or self.rows_for(b, budget), self.length, self.max_segments, self.strategy)
        return RowSpec(b, length or self.length)

    def for_embedding(self, tower: str, max_segments: int = 32) -> "BatchConfig":
        """Shapes for embedding one tower (packed mode; other modes are returned as they are).

        Training sizes rows for every prompt at its full budget, because a step must hold its B/N
        examples whatever their lengths; an embedding pass has no such pairing. So rows are as long
        as the tower's budget (no longer: attention over a row costs its length squared) and hold as
        many prompts as fit, up to `max_segments`; a call keeps the training batch's token count.
        `examples_per_shard` becomes the slots a call can fill (rows x max_segments).
        """
        if self.mode != "packed":
            return self
        budget = self.member_tokens if tower == "member" else self.item_tokens
        rows = -(-self.tower_spec(tower).rows * self.length // budget)
        segments = max(1, min(max_segments, budget))
        return dataclasses.replace(self, length=budget, member_budget=None, item_budget=None, member_rows=rows,
                                   item_rows=rows, max_segments=segments, examples_per_shard=rows * segments)


class BucketBatchIterDataset(grain.IterDataset):
    """Length bucketing: each example waits in the bucket of the smallest boundary that holds its
    longest prompt; a bucket that has `num_shards * capacity` examples becomes one batch of rows
    that long (one prompt per row), made by `new_batcher(boundary)`. At the end of the data the
    buckets are flushed, shortest first, with filler examples."""

    def __init__(self, parent: grain.IterDataset, boundaries: Sequence[int], longest: Callable[[dict], int],
                 new_batcher: Callable[[int], Batcher], capacity: int, num_shards: int = 1):
        super().__init__(parent)
        if not boundaries or list(boundaries) != sorted(set(boundaries)):
            raise ValueError(f"bucket boundaries must be increasing and non-empty, got {boundaries}")
        self._boundaries, self._longest = list(boundaries), longest
        self._new_batcher, self._capacity, self._num_shards = new_batcher, capacity, num_shards

    def __iter__(self) -> "_BucketIterator":
        return _BucketIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"BucketBatchIterDataset(boundaries={self._boundaries})"


class _BucketIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, config: BucketBatchIterDataset):
        super().__init__(parent)
        self._cfg = config
        self._pending: list[list[dict]] = [[] for _ in config._boundaries]
        self._exhausted = False

    def _bucket_of(self, example: dict) -> int:
        n = self._cfg._longest(example)
        for i, boundary in enumerate(self._cfg._boundaries):
            if n <= boundary:
                return i
        raise ValueError(f"example {example.get('id')!r} has a prompt of {n} tokens, longer than the "
                         f"largest bucket boundary {self._cfg._boundaries[-1]}")

    def _emit(self, bucket: int) -> DualTowerBatch | EmbeddingBatch:
        boundary = self._cfg._boundaries[bucket]
        shards = []
        for _ in range(self._cfg._num_shards):
            batcher = self._cfg._new_batcher(boundary)
            queue = self._pending[bucket]
            while queue and len(batcher) < batcher.capacity:
                if not batcher.add(queue[0]):
                    raise ValueError(f"bucket batcher for length {boundary} must hold {batcher.capacity} "
                                     "examples (one prompt per row)")
                queue.pop(0)
            shards.append(batcher.build())
        return stack_shards(shards)

    def __next__(self) -> DualTowerBatch | EmbeddingBatch:
        full = self._cfg._num_shards * self._cfg._capacity
        while not self._exhausted:
            try:
                example = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            bucket = self._bucket_of(example)
            self._pending[bucket].append(example)
            if len(self._pending[bucket]) >= full:
                return self._emit(bucket)
        for bucket, queue in enumerate(self._pending):
            if queue:
                return self._emit(bucket)
        raise StopIteration

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "exhausted": self._exhausted,
                "pending": [[state_encode(e) for e in queue] for queue in self._pending]}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._exhausted = bool(state["exhausted"])
        self._pending = [[state_decode(e) for e in queue] for queue in state["pending"]]


def suggest_rows(lengths: Sequence[int], prompts_per_shard: int, length: int, headroom: float = 1.15) -> int:
    """Rows enough for `prompts_per_shard` prompts of the sampled `lengths`, plus `headroom`."""
    mean = float(np.mean(lengths)) if len(lengths) else float(length)
    return max(1, int(np.ceil(headroom * prompts_per_shard * mean / length)))


def item_key(item_id: str) -> int:
    """A stable non-zero 31-bit hash of an item id: equal keys = same item (0 = none)."""
    return (zlib.crc32(item_id.encode("utf-8")) & 0x7FFFFFFF) or 1


class LogQ:
    """log q(item): the item's share of the training positives, add-one smoothed over the corpus so
    an item never seen as a positive (or unknown) gets log(1 / (positives + corpus size))."""

    def __init__(self, positives: dict[str, int], corpus_size: int):
        total = float(sum(positives.values()) + max(corpus_size, len(positives)))
        self._table = {item: float(np.log((count + 1) / total)) for item, count in positives.items()}
        self._unseen = float(np.log(1 / total))

    def __call__(self, item_id: str) -> float:
        return self._table.get(item_id, self._unseen)


def as_text(value: Any) -> str:
    """A text field (str, or bytes as older sources gave them) or any value as str."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> list[str]:
    return [as_text(v) for v in (values if values is not None else [])]


class PromptTokenizer:
    """Prompt records -> token arrays within their budgets, BOS/EOS added (grain map functions)."""

    def __init__(self, tokenizer, fmt: PromptFormat, config: BatchConfig, log_q: "LogQ | None" = None):
        tokenizer.add_special_tokens(list(fmt.markers))
        self.tok, self.config, self.log_q = tokenizer, config, log_q
        self.start = [tokenizer.bos_id] if config.add_bos else []
        self.end = [tokenizer.eos_id] if config.add_eos else []
        self.last_field_open = tokenizer.token_to_id(fmt.item_last_field)
        self.item_closing = tokenizer.encode(fmt.item_closing)

    def member(self, record: dict) -> np.ndarray:
        profile, history = _texts(record["member_profile"]), _texts(record["member_history"])
        parts = self.tok.encode_batch([as_text(record["member_prefix"]), *profile, *history,
                                       as_text(record["member_suffix"])])
        prefix, suffix = self.start + parts[0], parts[-1] + self.end
        ids, _ = fit_member_tokens(prefix, parts[1:1 + len(profile)], parts[1 + len(profile):-1], suffix,
                                   self.config.member_tokens)
        return np.asarray(ids, np.int32)

    def items(self, prompts: list[str]) -> list[np.ndarray]:
        budget = self.config.item_tokens - len(self.start) - len(self.end)
        return [np.asarray(self.start + fit_item_tokens(ids, budget, self.last_field_open, self.item_closing)
                           + self.end, np.int32) for ids in self.tok.encode_batch(prompts)]

    def dual(self, record: dict) -> dict:
        negatives = _texts(record["negative_prompts"])[: self.config.num_hard_negatives]
        negative_ids = _texts(record["negative_ids"])[: len(negatives)]
        positive_id = as_text(record["positive_id"])
        example = {"id": as_text(record["user_id"]), "member": self.member(record),
                   "items": self.items([as_text(record["positive_prompt"]), *negatives]),
                   "item_keys": np.asarray([item_key(i) for i in [positive_id, *negative_ids]], np.int32)}
        if self.log_q is not None:
            example["item_log_q"] = np.asarray([self.log_q(i) for i in [positive_id, *negative_ids]], np.float32)
        return example

    def member_only(self, record: dict) -> dict:
        return {"id": as_text(record["user_id"]), "tokens": self.member(record)}

    def item_only(self, record: dict) -> dict:
        return {"id": as_text(record["item_id"]), "tokens": self.items([as_text(record["item_prompt"])])[0]}


def _process_slice(records, shard_index: int | None, shard_count: int | None) -> grain.MapDataset:
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, {shard_count})")
    ds = grain.MapDataset.source(records)
    return ds[shard_index::shard_count] if shard_count > 1 else ds


def _batched(ds: grain.IterDataset, config: BatchConfig, num_shards: int, tower: str, pad_id: int,
             min_batches: int = 0, log_q: bool = False):
    b, h, dual = config.examples_per_shard, config.num_hard_negatives, tower == "dual"

    def new_batcher(length: int | None = None):
        if dual:
            return DualTowerBatcher(b, *config.row_specs(length), h, pad_id, log_q=log_q)
        return OneTowerBatcher(b, config.tower_spec(tower, length), pad_id)

    if config.mode != "bucketed":
        return PackedBatchIterDataset(ds, new_batcher, num_shards, min_batches)
    if min_batches:
        raise ValueError("min_batches needs packed or padded mode, not bucketed")
    if dual:
        longest = lambda e: max(len(e["member"]), *(len(t) for t in e["items"]))  # noqa: E731
    else:
        longest = lambda e: len(e["tokens"])  # noqa: E731
    return BucketBatchIterDataset(ds, config.bucket_boundaries, longest, new_batcher, b, num_shards)


def train_batches(records, tokenizer, fmt: PromptFormat, config: BatchConfig, *, seed: int,
                  num_epochs: int | None = None, num_shards: int = 1, shard_index: int | None = None,
                  shard_count: int | None = None, read_threads: int = 4,
                  log_q: "LogQ | None" = None) -> grain.IterDataset:
    """Dual-encoder batches from train records, reshuffled every epoch; `num_epochs=None` repeats
    forever. `num_shards` is N, the data-parallel shards this process feeds. With `log_q`, batches
    carry each item's log sampling probability (positive_log_q / negative_log_q)."""
    ds = _process_slice(records, shard_index, shard_count)
    if len(ds) == 0:
        raise ValueError("this process's slice of the training records is empty")
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.map(PromptTokenizer(tokenizer, fmt, config, log_q).dual)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=64))
    return _batched(ds, config, num_shards, "dual", tokenizer.pad_id, log_q=log_q is not None)


def embedding_batches(records, tokenizer, fmt: PromptFormat, config: BatchConfig, *, tower: str,
                      num_shards: int = 1, shard_index: int | None = None, shard_count: int | None = None,
                      read_threads: int = 4, min_batches: int = 0) -> grain.IterDataset:
    """One-tower batches in record order, each record once: `tower="item"` for corpus records
    (item_id, item_prompt), `tower="member"` for member records (user_id, member_*). In padded
    mode pass `min_batches=padded_batch_count(...)` so every process yields as many batches."""
    if tower not in ("item", "member"):
        raise ValueError(f"tower must be 'item' or 'member', got {tower!r}")
    tokenise = PromptTokenizer(tokenizer, fmt, config)
    ds = _process_slice(records, shard_index, shard_count)
    ds = ds.map(tokenise.item_only if tower == "item" else tokenise.member_only)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=64))
    return _batched(ds, config, num_shards, tower, tokenizer.pad_id, min_batches)


def padded_batch_count(num_records: int, config: BatchConfig, num_shards: int, shard_count: int) -> int:
    """Batches of the process with the most records, in padded mode (one prompt per row)."""
    per_process = -(-num_records // shard_count)
    return -(-per_process // (num_shards * config.examples_per_shard))


def local_data_shards(mesh, axis: str = "data") -> int:
    """N for this process: how many distinct positions along `axis` its devices occupy."""
    local = {d.id for d in mesh.local_devices}
    index = mesh.axis_names.index(axis)
    positions = {coords[index] for coords, device in np.ndenumerate(mesh.devices) if device.id in local}
    return len(positions)


def to_global(batch: DualTowerBatch | EmbeddingBatch, mesh, axis: str = "data"):
    """This process's batch -> global jax arrays sharded over `axis` along the leading N axis
    (host-side `ids` stay a list)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    def place(value):
        spec = PartitionSpec(axis, *([None] * (value.ndim - 1)))
        return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)

    return jax.tree.map(place, batch)  # static (host-only) fields are carried over untouched
