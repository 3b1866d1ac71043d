"""Packing tokenised prompts into fixed-shape rows, and the grain transformations that turn a
stream of examples into the typed batches of ff_jax.data.batches (DualTowerBatch, EmbeddingBatch;
docs/contracts.md).

A row of `length` tokens holds at most `max_segments` prompts; segment ids count 1, 2, ... along
the row (0 = padding) and positions restart at 0 in every segment, so the model's mask rule (same
non-zero segment id, causal) keeps prompts apart. Prompt k of a row sits in slot
`row * max_segments + (segment_id - 1)`. Padded mode is `max_segments=1`.

Length bucketing (the other way to cut padding) is `ff_jax.data.pipeline.BucketBatchIterDataset`.

Shapes are fixed: a batch holds `examples` examples per shard. An example whose prompts do not fit
the rows left is carried to the next batch (nothing is dropped); empty example places are fillers
with `example_mask = 0`. The carried examples are part of the iterator state, so a restored
iterator continues with exactly the batches the original would have produced.
"""

from __future__ import annotations

import base64
import dataclasses
from collections import deque
from typing import Any, Callable, Protocol, Sequence

import grain
import numpy as np

from ff_jax.data.batches import DualTowerBatch, EmbeddingBatch, segment_id_arrays, stack_shards

STRATEGIES = ("first_fit", "best_fit")


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """`rows` rows of `length` tokens, at most `max_segments` prompts per row."""

    rows: int
    length: int
    max_segments: int = 1
    strategy: str = "first_fit"

    def __post_init__(self):
        for name in ("rows", "length", "max_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"RowSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"RowSpec.strategy must be one of {STRATEGIES}, got {self.strategy!r}")

    @property
    def slots(self) -> int:
        return self.rows * self.max_segments


class RowPacker:
    """Places token sequences into the rows of one `RowSpec`."""

    def __init__(self, spec: RowSpec):
        self.spec = spec
        self._free = np.full(spec.rows, spec.length, np.int64)  # tokens left per row
        self._used = np.zeros(spec.rows, np.int64)  # segments per row
        self._placed: list[tuple[int, np.ndarray]] = []  # (row, tokens) in placement order

    def _choose_row(self, n: int, free: np.ndarray, used: np.ndarray) -> int:
        ok = (free >= n) & (used < self.spec.max_segments)
        if not ok.any():
            return -1
        if self.spec.strategy == "first_fit":
            return int(np.argmax(ok))
        candidates = np.flatnonzero(ok)  # best fit: the row that the prompt leaves fullest
        return int(candidates[np.argmin(free[candidates])])

    def place(self, sequences: Sequence[np.ndarray]) -> list[int] | None:
        """Places every sequence and returns their slots, or places none and returns None."""
        for seq in sequences:
            if not 0 < len(seq) <= self.spec.length:
                raise ValueError(f"cannot pack a prompt of {len(seq)} tokens into rows of "
                                 f"{self.spec.length}; truncate prompts to the row length first")
        # Work on copies so a multi-prompt example is all-or-nothing.
        free, used = self._free.copy(), self._used.copy()
        chosen = []
        for seq in sequences:
            row = self._choose_row(len(seq), free, used)
            if row < 0:
                return None
            chosen.append((row, int(used[row])))
            free[row] -= len(seq)
            used[row] += 1
        self._free, self._used = free, used
        self._placed.extend((row, seq) for (row, _), seq in zip(chosen, sequences))
        return [row * self.spec.max_segments + segment for row, segment in chosen]

    def snapshot(self) -> tuple:
        return self._free.copy(), self._used.copy(), len(self._placed)

    def restore(self, snapshot: tuple) -> None:
        self._free, self._used, placed = snapshot[0].copy(), snapshot[1].copy(), snapshot[2]
        del self._placed[placed:]

    def arrays(self, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tokens, segment_ids, positions: int32 [rows, length]."""
        shape = (self.spec.rows, self.spec.length)
        tokens = np.full(shape, pad_id, np.int32)
        segment_ids = np.zeros(shape, np.int32)
        positions = np.zeros(shape, np.int32)
        cursor = np.zeros(self.spec.rows, np.int64)
        count = np.zeros(self.spec.rows, np.int32)
        for row, seq in self._placed:
            start, n = cursor[row], len(seq)
            count[row] += 1
            tokens[row, start:start + n] = seq
            segment_ids[row, start:start + n] = count[row]
            positions[row, start:start + n] = np.arange(n, dtype=np.int32)
            cursor[row] += n
        return tokens, segment_ids, positions


class Batcher(Protocol):
    """Collects up to `capacity` examples of one shard batch."""

    capacity: int

    def add(self, example: dict) -> bool: ...
    def __len__(self) -> int: ...
    def build(self) -> DualTowerBatch | EmbeddingBatch: ...  # one shard: no leading N axis


class DualTowerBatcher:
    """One shard of a dual-encoder batch. An example is a dict with `member` (int32 tokens),
    `items` (positive then hard negatives, int32 tokens each), `item_keys` (int32 per item: a hash
    of the item id, so the trainer can mask in-batch duplicates), `item_log_q` (float per item, for
    the logQ correction) when the batcher was made with `log_q=True`, and `id` (for error messages)."""

    def __init__(self, capacity: int, member: RowSpec, item: RowSpec, num_negatives: int, pad_id: int,
                 log_q: bool = False):
        self.capacity, self.num_negatives, self.pad_id = capacity, num_negatives, pad_id
        # Fixed per pipeline, not per example: an empty filler shard must still carry the fields.
        self.log_q = log_q
        self._members, self._items = RowPacker(member), RowPacker(item)
        self._member_slot: list[int] = []
        self._item_slots: list[list[int]] = []
        self._keys: list[list[int]] = []
        self._log_q: list[list[float]] = []

    def __len__(self) -> int:
        return len(self._member_slot)

    def add(self, example: dict) -> bool:
        items = list(example["items"])[: 1 + self.num_negatives]
        if not items:
            raise ValueError(f"example {example.get('id')!r} has no positive item prompt")
        if len(self) >= self.capacity:
            return False
        # Items first: placing the member cannot be undone, placing items is all-or-nothing.
        before = self._items.snapshot()
        item_slots = self._items.place(items)
        member_slot = None if item_slots is None else self._members.place([example["member"]])
        if member_slot is None:
            self._items.restore(before)
            if len(self) == 0:
                raise ValueError(
                    f"example {example.get('id')!r} does not fit an empty batch (member prompt "
                    f"{len(example['member'])} tokens, item prompts {[len(t) for t in items]}); "
                    "use more rows, more segments per row or longer rows")
            return False
        self._member_slot.append(member_slot[0])
        self._item_slots.append(item_slots)
        self._keys.append([int(k) for k in list(example["item_keys"])[: len(items)]])
        if self.log_q:
            self._log_q.append([float(q) for q in list(example["item_log_q"])[: len(items)]])
        return True

    def build(self) -> DualTowerBatch:
        b, h = self.capacity, self.num_negatives
        member_tokens, member_segments, member_positions = self._members.arrays(self.pad_id)
        item_tokens, item_segments, item_positions = self._items.arrays(self.pad_id)
        member_slot = np.zeros(b, np.int32)  # fillers point at slot 0 and are masked out
        positive_slot = np.zeros(b, np.int32)
        negative_slot = np.full((b, h), -1, np.int32)
        positive_key = np.zeros(b, np.int32)
        negative_key = np.zeros((b, h), np.int32)
        mask = np.zeros(b, np.float32)
        for i, (m, slots, keys) in enumerate(zip(self._member_slot, self._item_slots, self._keys)):
            member_slot[i], positive_slot[i], positive_key[i], mask[i] = m, slots[0], keys[0], 1.0
            negative_slot[i, : len(slots) - 1] = slots[1:]
            negative_key[i, : len(keys) - 1] = keys[1:]
        log_q = {}
        if self.log_q:
            positive_log_q, negative_log_q = np.zeros(b, np.float32), np.zeros((b, h), np.float32)
            for i, values in enumerate(self._log_q):
                positive_log_q[i], negative_log_q[i, : len(values) - 1] = values[0], values[1:]
            log_q = dict(positive_log_q=positive_log_q, negative_log_q=negative_log_q)
        return DualTowerBatch(
            member_tokens=member_tokens, member_segment_ids=member_segments,
            member_positions=member_positions, member_slot=member_slot,
            item_tokens=item_tokens, item_segment_ids=item_segments, item_positions=item_positions,
            positive_slot=positive_slot, negative_slot=negative_slot, example_mask=mask,
            positive_key=positive_key, negative_key=negative_key, **log_q)


class OneTowerBatcher:
    """One shard of an embedding batch. An example is a dict with `tokens` and `id` (str)."""

    def __init__(self, capacity: int, spec: RowSpec, pad_id: int):
        self.capacity, self.pad_id = capacity, pad_id
        self._packer = RowPacker(spec)
        self._slots: list[int] = []
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, example: dict) -> bool:
        if len(self) >= self.capacity:
            return False
        slot = self._packer.place([example["tokens"]])
        if slot is None:
            if len(self) == 0:
                raise ValueError(f"{example.get('id')!r}: {len(example['tokens'])} tokens do not fit an empty batch")
            return False
        self._slots.append(slot[0])
        self._ids.append(str(example["id"]))
        return True

    def build(self) -> EmbeddingBatch:
        tokens, segment_ids, positions = self._packer.arrays(self.pad_id)
        slot = np.zeros(self.capacity, np.int32)
        slot[: len(self._slots)] = self._slots
        mask = np.zeros(self.capacity, np.float32)
        mask[: len(self._slots)] = 1.0
        ids = self._ids + [""] * (self.capacity - len(self._ids))
        return EmbeddingBatch(tokens=tokens, segment_ids=segment_ids, positions=positions, slot=slot,
                              example_mask=mask, ids=ids)


def padding_waste(batch: DualTowerBatch | EmbeddingBatch) -> float:
    """Fraction of token positions that are padding (segment id 0), over all towers of a batch."""
    arrays = segment_id_arrays(batch)
    total = sum(a.size for a in arrays)
    return float(sum(int((a == 0).sum()) for a in arrays) / max(total, 1))


# --------------------------------------------------------------------------- grain transformations


def state_encode(value: Any) -> Any:
    """JSON-able form of a carried example (the iterator state goes through json.dumps)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii"),
                "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, dict):
        return {k: state_encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [state_encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def state_decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            data = base64.b64decode(value["__ndarray__"])
            return np.frombuffer(data, np.dtype(value["dtype"])).reshape(value["shape"]).copy()
        return {k: state_decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [state_decode(v) for v in value]
    return value


class PackedBatchIterDataset(grain.IterDataset):
    """Examples -> batches of `num_shards` shard batches made by `new_batcher()`.

    Each shard batch first retries the examples carried over (in order), then takes fresh ones
    until it has considered `capacity` examples. The oldest carried example always opens a batch,
    so every example is emitted within `capacity` batches and the carry stays below `capacity`.
    With `min_batches`, all-filler batches follow the data until that many were emitted (processes
    that must run the same number of steps).
    """

    def __init__(self, parent: grain.IterDataset, new_batcher: Callable[[], Batcher], num_shards: int = 1,
                 min_batches: int = 0):
        super().__init__(parent)
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._new_batcher, self._num_shards, self._min_batches = new_batcher, num_shards, min_batches

    def __iter__(self) -> "_PackedBatchIterator":
        return _PackedBatchIterator(self._parent.__iter__(), self._new_batcher, self._num_shards, self._min_batches)

    def __str__(self) -> str:
        return f"PackedBatchIterDataset(num_shards={self._num_shards})"


class _PackedBatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, new_batcher, num_shards: int, min_batches: int):
        super().__init__(parent)
        self._new_batcher, self._num_shards, self._min_batches = new_batcher, num_shards, min_batches
        self._carry: deque[dict] = deque()
        self._exhausted = False
        self._emitted = 0

    def _pull(self) -> dict | None:
        if self._exhausted:
            return None
        try:
            return next(self._parent)
        except StopIteration:
            self._exhausted = True
            return None

    def _fill(self, batcher: Batcher) -> None:
        carried, self._carry = list(self._carry), deque()
        considered = 0
        for example in carried:
            if not batcher.add(example):
                self._carry.append(example)
            considered += 1
        while considered < batcher.capacity:
            example = self._pull()
            if example is None:
                break
            if not batcher.add(example):
                self._carry.append(example)
            considered += 1

    def __next__(self) -> DualTowerBatch | EmbeddingBatch:
        shards = []
        for shard in range(self._num_shards):
            batcher = self._new_batcher()
            self._fill(batcher)
            if shard == 0 and len(batcher) == 0 and self._emitted >= self._min_batches:
                raise StopIteration
            shards.append(batcher.build())
        self._emitted += 1
        return stack_shards(shards)

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "exhausted": self._exhausted, "emitted": self._emitted,
                "carry": [state_encode(example) for example in self._carry]}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._exhausted, self._emitted = bool(state["exhausted"]), int(state["emitted"])
        self._carry = deque(state_decode(example) for example in state["carry"])
