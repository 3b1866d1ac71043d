"""The records of a prepared dataset (ff_jax.data.store), rendered when read.

`open_store(root)` gives random-access sources (len, [i]) that grain reads like any data source. A
member-example record is the same dict the text records of earlier versions held (docs/data_pipeline.md):
its member prompt is rendered from the member's profile pieces and the history pieces of its
timeline[:end], by ff_jax.data.prompts.member_prompt. `without_prompts()` gives the ids and times
alone, for evaluation, which needs no text.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ff_jax.data.prompts import PromptTemplate, member_prompt
from ff_jax.data.store import SPLITS, open_table, read_metadata


class _Strings:
    """Row i of a memory-mapped large_string column as str, without copying the column."""

    def __init__(self, column: pa.ChunkedArray):
        self._parts, starts = [], [0]
        for chunk in column.chunks:
            buffers = chunk.buffers()
            offsets = np.frombuffer(buffers[1], np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
            self._parts.append((offsets, memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")))
            starts.append(starts[-1] + len(chunk))
        self._starts = starts

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> str:
        part = bisect.bisect_right(self._starts, i) - 1
        offsets, data = self._parts[part]
        j = i - self._starts[part]
        return str(data[offsets[j]:offsets[j + 1]], "utf-8")


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _lists(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list<int32> column: row i is values[offsets[i]:offsets[i + 1]]."""
    column = table.column(name).combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
    return column.offsets.to_numpy(), column.values.to_numpy(zero_copy_only=False)


class Store:
    """One prepared dataset, opened: its metadata and the columns records are rendered from."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metadata = read_metadata(self.root)
        self.template = PromptTemplate(**self.metadata["template"])
        items = open_table(self.root / "items.arrow")
        self.item_ids, self.item_prompts = _Strings(items.column("item_id")), _Strings(items.column("item_prompt"))
        self.pieces = _Strings(items.column("history_piece"))
        self.item_authors, self.item_created_at = _Strings(items.column("author")), _ints(items, "created_at")
        members = open_table(self.root / "members.arrow")
        self.user_ids, self.cohorts = _Strings(members.column("user_id")), members.column("cohort")
        self.profiles, self.member_start = members.column("profile"), _ints(members, "start")
        timeline = open_table(self.root / "timeline.arrow")
        self.timeline_items, self.timeline_engaged = _ints(timeline, "item"), _ints(timeline, "engaged")
        self.splits = {split: open_table(self.root / f"{split}.arrow") for split in SPLITS}

    def member_fields(self, member: int, end: int) -> dict:
        start = int(self.member_start[member])
        history = self.timeline_items[start:start + end].tolist()
        engaged = self.timeline_engaged[start:start + end].tolist()
        prompt = member_prompt(self.template, self.profiles[member].as_py(), history, engaged, self.pieces)
        return {"member_prefix": prompt.prefix, "member_profile": prompt.profile,
                "member_history": prompt.history, "member_suffix": prompt.suffix}

    def engaged_history(self, member: int, end: int) -> list[str]:
        """The items the evaluation removes from the ranking: those engaged with before `end`."""
        start = int(self.member_start[member])
        items = self.timeline_items[start:start + end]
        return [self.item_ids[int(i)] for i in items[self.timeline_engaged[start:start + end]]]


class ExampleSource(Sequence):
    """The records of one split, in stored order (grain's MapDataset.source reads it by index)."""

    def __init__(self, store: Store, split: str, prompts: bool = True):
        self.store, self.split, self.prompts = store, split, prompts
        table = store.splits[split]
        self.member, self.end, self.timestamp = _ints(table, "member"), _ints(table, "end"), _ints(table, "timestamp")
        if split == "train":
            self.positive = _ints(table, "positive")
            self.offsets, self.values = _lists(table, "negatives")
        else:
            self.offsets, self.values = _lists(table, "targets")

    def __len__(self) -> int:
        return len(self.member)

    def without_prompts(self) -> "ExampleSource":
        """The same records without their prompt fields: ids, cohort and times only."""
        return ExampleSource(self.store, self.split, prompts=False)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} of a {self.split} split of {len(self)}")
        i = int(i) % len(self)
        s, member, end = self.store, int(self.member[i]), int(self.end[i])
        listed = [s.item_ids[int(x)] for x in self.values[self.offsets[i]:self.offsets[i + 1]]]
        record = {"user_id": s.user_ids[member], "cohort": s.cohorts[member].as_py(),
                  "timestamp": int(self.timestamp[i])}
        if self.split == "train":
            positive = int(self.positive[i])
            record.update(positive_id=s.item_ids[positive], negative_ids=listed, target_ids=[s.item_ids[positive]],
                          engaged_history_ids=[])
            if self.prompts:
                record.update(positive_prompt=s.item_prompts[positive],
                              negative_prompts=[s.item_prompts[int(x)]
                                                for x in self.values[self.offsets[i]:self.offsets[i + 1]]])
        else:
            record.update(positive_id="", negative_ids=[], target_ids=listed,
                          engaged_history_ids=s.engaged_history(member, end))
            if self.prompts:
                record.update(positive_prompt="", negative_prompts=[])
        if self.prompts:
            record.update(s.member_fields(member, end))
        return record

    def __getitems__(self, keys) -> list[dict]:
        return [self[k] for k in keys]


class CorpusSource(Sequence):
    """One record per item (item_id, item_prompt, created_at, author), in corpus order."""

    def __init__(self, store: Store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store.item_ids)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of a corpus of {len(self)}")
        i, s = int(i) % len(self), self.store
        return {"item_id": s.item_ids[i], "item_prompt": s.item_prompts[i],
                "created_at": int(s.item_created_at[i]), "author": s.item_authors[i]}

    def __getitems__(self, keys) -> list[dict]:
        return [self[k] for k in keys]


def open_store(root: str | Path) -> tuple[dict, CorpusSource, dict]:
    """(split -> ExampleSource, the corpus source, metadata) of a prepared dataset."""
    store = Store(root)
    return {split: ExampleSource(store, split) for split in SPLITS}, CorpusSource(store), store.metadata
