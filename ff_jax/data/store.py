"""A prepared dataset on disk: records hold ids and times, text lives once per item and per member.

One preparation is one folder (`<data_dir>/<dataset>/<config>/<STORE_VERSION>/`) of Arrow IPC files,
memory-mapped when read, so a reader's memory does not grow with the data:

    metadata.json   prompt format, template, schema, quantiser, split settings, counts
    items.arrow     one row per item, in corpus order: item_id, item_prompt, history_piece (its shorter
                    form inside member histories), created_at, author
    members.arrow   one row per member: user_id, cohort, profile (its rendered fields), start / stop of
                    its rows in timeline.arrow
    timeline.arrow  every interaction, grouped by member, oldest first: item (row of items.arrow), engaged
    train.arrow     member, end (the history is the member's timeline[:end]), positive, negatives, timestamp
    validation.arrow, test.arrow   member, end, targets, timestamp

A training example costs about 40 bytes whatever its history length; the prompts are rendered when a
record is read (ff_jax.data.store_records), from the same pieces and by the same function the
text records of earlier versions were, so a model sees the same prompts (tests/data/test_prompt_parity.py).

The folder is written under a temporary name and renamed when complete: a crash or a refused input
leaves no half-prepared dataset behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from ff_jax.data.prepare_engine import PrepareConfig, map_chunks
from ff_jax.data.tables_checks import index_in

STORE_VERSION = "2.0.0"
SPLITS = ("train", "validation", "test")
METADATA = "metadata.json"


def record_order(n: int, salt: str) -> np.ndarray:
    """The order records are stored in: their generation index i sorted by md5(salt + f"{i:09d}").

    This is the key-hash order TFDS's writer gave the text records of versions before 2.0, so a
    dataset prepared now trains on exactly the batches it did then (tested against TFDS's Hasher)."""
    base = hashlib.md5(salt.encode())

    def key(i: int) -> int:
        h = base.copy()
        h.update(f"{i:09d}".encode())
        return int.from_bytes(h.digest(), "big")

    return np.asarray(sorted(range(n), key=key), np.int64)


def _write_table(path: Path, batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> int:
    """Streams record batches into one Arrow IPC file; returns the rows written."""
    rows = 0
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
    finally:
        if hasattr(batches, "close"):  # a failed write ends the generator now (its progress bar too)
            batches.close()
    return rows


def _ragged(lists: list[list[int]]) -> pa.Array:
    return pa.array(lists, type=pa.list_(pa.int32()))


ITEM_SCHEMA = pa.schema([("item_id", pa.large_string()), ("item_prompt", pa.large_string()),
                         ("history_piece", pa.large_string()), ("created_at", pa.int64()),
                         ("author", pa.large_string())])
MEMBER_SCHEMA = pa.schema([("user_id", pa.large_string()), ("cohort", pa.string()),
                           ("profile", pa.list_(pa.large_string())), ("start", pa.int64()), ("stop", pa.int64())])
TIMELINE_SCHEMA = pa.schema([("item", pa.int32()), ("engaged", pa.bool_())])
TRAIN_SCHEMA = pa.schema([("member", pa.int32()), ("end", pa.int32()), ("positive", pa.int32()),
                          ("negatives", pa.list_(pa.int32())), ("timestamp", pa.int64())])
EVAL_SCHEMA = pa.schema([("member", pa.int32()), ("end", pa.int32()), ("targets", pa.list_(pa.int32())),
                         ("timestamp", pa.int64())])


class PrepareError(OSError):
    """Writing a preparation failed (a full disk, a file limit); the message names the dataset and
    the cause, and nothing of the preparation is left."""

    label = "data not prepared"


@dataclasses.dataclass
class StoreInput:
    """What a preparation writes (ff_jax.data.prepared.prepare gives it)."""

    tables: object  # FeedTables
    splits: object  # Splits
    renderer: object  # PromptRenderer
    metadata: dict
    created_at: np.ndarray  # int64 per row of tables.items (unix s, or UNKNOWN_TIME)
    authors: list[str]  # per row of tables.items ("" when unknown)


@dataclasses.dataclass(frozen=True)
class RenderItems:
    """A chunk of the items table -> item_id, item_prompt, history_piece (picklable, for engines)."""

    renderer: object  # PromptRenderer

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"item_id": chunk["item_id"].astype(str).tolist(),
                             "item_prompt": self.renderer.item_prompts(chunk),
                             "history_piece": list(self.renderer.history_pieces(chunk).values())})


@dataclasses.dataclass(frozen=True)
class RenderProfiles:
    """A chunk of the users table -> user_id, profile (its rendered fields)."""

    renderer: object  # PromptRenderer

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        profiles = self.renderer.profiles(chunk)
        ids = chunk["user_id"].astype(str).tolist()
        return pd.DataFrame({"user_id": ids, "profile": [profiles[u] for u in ids]})


def write_store(data: StoreInput, root: Path, progress: bool = True, engine: PrepareConfig | None = None) -> Path:
    """Writes the preparation into `root` atomically (a temporary sibling, renamed when complete);
    `engine` renders the text (this machine's cores by default)."""
    root = Path(root)
    tmp = root.with_name(f".{root.name}.incomplete-{os.getpid()}")
    _remove_abandoned(root)
    made = [p for p in tmp.parents if not p.exists()]  # folders this call creates, deepest first
    tmp.mkdir(parents=True)
    try:
        counts = _write_all(data, tmp, progress, engine or PrepareConfig())
        metadata = {**data.metadata, "store_version": STORE_VERSION, "counts": counts}
        (tmp / METADATA).write_text(json.dumps(metadata, indent=1, sort_keys=True, default=str))
        if root.exists():  # a stale or concurrent preparation of the same content: replace it whole
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # no empty <dataset>/<config>/ folders left behind either
            if folder.exists() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(err, OSError) and not isinstance(err, PrepareError):
            raise PrepareError(err.errno, f"{root}: writing the prepared dataset failed "
                                          f"({err.strerror or err}); nothing of it was kept") from None
        raise
    return root


def _remove_abandoned(root: Path) -> None:
    """Temporary folders of preparations whose process died (SIGKILL, power loss) are removed."""
    for folder in root.parent.glob(f".{root.name}.incomplete-*") if root.parent.exists() else ():
        pid = folder.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _write_all(data: StoreInput, out: Path, progress: bool, engine: PrepareConfig) -> dict:
    tables, splits, renderer = data.tables, data.splits, data.renderer
    items, users, inter = tables.items, tables.users, tables.interactions

    # Items in corpus order; every other file names an item by its row here.
    order = record_order(len(items), "corpus")
    row_of_item = np.empty(len(items), np.int64)
    row_of_item[order] = np.arange(len(items))
    created_at, authors = data.created_at[order], np.asarray(data.authors, dtype=object)[order]

    def item_batches():
        done = 0
        with tqdm(total=len(items), desc=f"{tables.name} item prompts", unit="item", disable=not progress,
                  mininterval=1.0, leave=False) as bar:  # closed (its line cleared) on an error too
            for rendered in map_chunks(RenderItems(renderer), items.iloc[order], engine):
                n = len(rendered)
                yield pa.record_batch([pa.array(rendered["item_id"].tolist(), pa.large_string()),
                                       pa.array(rendered["item_prompt"].tolist(), pa.large_string()),
                                       pa.array(rendered["history_piece"].tolist(), pa.large_string()),
                                       pa.array(created_at[done:done + n], pa.int64()),
                                       pa.array(authors[done:done + n].tolist(), pa.large_string())],
                                      schema=ITEM_SCHEMA)
                done += n
                bar.update(n)

    _write_table(out / "items.arrow", item_batches(), ITEM_SCHEMA)

    # Each member's interactions oldest first, as temporal_split walks them.
    member_of_row = index_in(inter["user_id"], users["user_id"])
    by_member = np.argsort(member_of_row, kind="stable")
    bounds = np.searchsorted(member_of_row[by_member], np.arange(len(users) + 1))
    item_rows = row_of_item[index_in(inter["item_id"], items["item_id"])]
    _write_table(out / "timeline.arrow", iter([pa.record_batch(
        [pa.array(item_rows[by_member].astype(np.int32)), pa.array(inter["engaged"].to_numpy(bool)[by_member])],
        schema=TIMELINE_SCHEMA)]), TIMELINE_SCHEMA)

    user_ids = users["user_id"].astype(str)

    def member_batches():
        done = 0
        for rendered in map_chunks(RenderProfiles(renderer), users, engine):
            ids, n = rendered["user_id"].tolist(), len(rendered)
            yield pa.record_batch([pa.array(ids, pa.large_string()),
                                   pa.array([splits.cohorts.get(u, "new") for u in ids], pa.string()),
                                   pa.array(rendered["profile"].tolist(), pa.list_(pa.large_string())),
                                   pa.array(bounds[done:done + n], pa.int64()),
                                   pa.array(bounds[done + 1:done + 1 + n], pa.int64())], schema=MEMBER_SCHEMA)
            done += n

    _write_table(out / "members.arrow", member_batches(), MEMBER_SCHEMA)

    member_index = dict(zip(user_ids.tolist(), range(len(users))))
    item_index = dict(zip(items["item_id"].astype(str).tolist(), row_of_item.tolist()))
    counts = {"items": len(items), "members": len(users), "interactions": len(inter)}
    for split in SPLITS:
        rows = getattr(splits, split)
        order = record_order(len(rows), split)
        columns = {"member": np.empty(len(rows), np.int32), "end": np.empty(len(rows), np.int32),
                   "timestamp": np.empty(len(rows), np.int64)}
        lists: list[list[int]] = [[] for _ in rows]
        positive = np.empty(len(rows), np.int32)
        for at, i in enumerate(tqdm(order.tolist(), desc=f"{tables.name} {split} records", unit="example",
                                    disable=not progress, mininterval=1.0, leave=False)):
            row = rows[i]
            _check_history(row)
            columns["member"][at] = member_index[row.user_id]
            columns["end"][at] = len(row.history)
            columns["timestamp"][at] = row.timestamp
            if split == "train":
                positive[at] = item_index[row.positive]
                lists[at] = [item_index[n] for n in row.hard_negatives]
            else:
                lists[at] = [item_index[t] for t in row.targets]
        if split == "train":
            arrays = [columns["member"], columns["end"], positive, _ragged(lists), columns["timestamp"]]
            schema = TRAIN_SCHEMA
        else:
            arrays = [columns["member"], columns["end"], _ragged(lists), columns["timestamp"]]
            schema = EVAL_SCHEMA
        batch = pa.record_batch([a if isinstance(a, pa.Array) else pa.array(a) for a in arrays], schema=schema)
        counts[split] = _write_table(out / f"{split}.arrow", iter([batch]), schema)
    return counts


def _check_history(row) -> None:
    """Records name a history by its end in the member's timeline: it must start there."""
    start = getattr(row.history, "start", 0)  # EvalMember histories are lists from 0
    if start:
        raise ValueError("temporal_split(max_history=...) histories cannot be stored; prompts truncate to "
                         "PromptTemplate.max_history_items and the token budget instead")


def is_complete(root: Path) -> bool:
    return (Path(root) / METADATA).is_file()


def read_metadata(root: Path) -> dict:
    return json.loads((Path(root) / METADATA).read_text())


def open_table(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped: its pages are read from disk when touched."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
