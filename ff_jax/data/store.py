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

from ff_jax.data.prepare_engine import ChunkMapper, PrepareConfig
from ff_jax.data.tables_checks import index_in

STORE_VERSION = "2.0.0"
SPLITS = ("train", "validation", "test")
METADATA = "metadata.json"


def record_order(n: int, salt: str) -> np.ndarray:
    """The order records are stored in: their generation index i sorted by md5(salt + f"{i:09d}").

    This is the key-hash order TFDS's writer gave the text records of versions before 2.0, so a
    dataset prepared now trains on exactly the batches it did then (tested against TFDS's Hasher).
    The digests are sorted as two big-endian 64-bit halves: the order of the 128-bit numbers."""
    base = hashlib.md5(salt.encode())

    def digest(i: int) -> bytes:
        h = base.copy()
        h.update(b"%09d" % i)
        return h.digest()

    halves = np.frombuffer(b"".join(map(digest, range(n))), dtype=">u8").reshape(n, 2)
    return np.lexsort((halves[:, 1], halves[:, 0])).astype(np.int64)


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


def _ragged(offsets: np.ndarray, values: np.ndarray, order: np.ndarray) -> pa.Array:
    """list<int32> whose row j is values[offsets[order[j]]:offsets[order[j] + 1]]."""
    lengths = np.diff(offsets)[order]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    within = np.arange(new_offsets[-1]) - np.repeat(new_offsets[:-1], lengths)
    taken = values[np.repeat(offsets[:-1][order], lengths) + within]
    return pa.ListArray.from_arrays(pa.array(new_offsets, pa.int32()), pa.array(taken.astype(np.int32)))


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
    schema = pa.schema([("item_id", pa.large_string()), ("item_prompt", pa.large_string()),
                        ("history_piece", pa.large_string())])

    def __call__(self, chunk: pd.DataFrame) -> pa.RecordBatch:
        return pa.record_batch([pa.array(chunk["item_id"].astype(str).tolist(), pa.large_string()),
                                pa.array(self.renderer.item_prompts(chunk), pa.large_string()),
                                pa.array(list(self.renderer.history_pieces(chunk).values()), pa.large_string())],
                               schema=self.schema)


@dataclasses.dataclass(frozen=True)
class RenderProfiles:
    """A chunk of the users table -> user_id, profile (its rendered fields)."""

    renderer: object  # PromptRenderer
    schema = pa.schema([("user_id", pa.large_string()), ("profile", pa.list_(pa.large_string()))])

    def __call__(self, chunk: pd.DataFrame) -> pa.RecordBatch:
        profiles = self.renderer.profiles(chunk)
        ids = chunk["user_id"].astype(str).tolist()
        return pa.record_batch([pa.array(ids, pa.large_string()),
                                pa.array([profiles[u] for u in ids], pa.list_(pa.large_string()))],
                               schema=self.schema)


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
    scratch = out / ".scratch"
    try:
        with ChunkMapper(engine, scratch) as mapper:
            return _write_files(data, out, progress, mapper)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _write_files(data: StoreInput, out: Path, progress: bool, mapper: ChunkMapper) -> dict:
    tables, splits, renderer = data.tables, data.splits, data.renderer
    items, users, inter = tables.items, tables.users, tables.interactions

    # Items in corpus order; every other file names an item by its row here. Their text is rendered
    # first (local workers start now), the ids and records below are computed meanwhile.
    columns = splits.columns
    _check_history(columns, splits.settings.get("max_history"))
    corpus = record_order(len(items), "corpus")
    rendered_items = mapper.map(RenderItems(renderer), items.iloc[corpus])
    rendered_members = mapper.map(RenderProfiles(renderer), users)
    row_of_item = np.empty(len(items), np.int64)
    row_of_item[corpus] = np.arange(len(items))

    # Each member's interactions oldest first: temporal_split's timeline.
    by_member, bounds = columns.timeline, columns.bounds
    item_rows = row_of_item[index_in(inter["item_id"], items["item_id"])][by_member].astype(np.int32)
    _write_table(out / "timeline.arrow", iter([pa.record_batch(
        [pa.array(item_rows), pa.array(inter["engaged"].to_numpy(bool)[by_member])],
        schema=TIMELINE_SCHEMA)]), TIMELINE_SCHEMA)

    times = inter["timestamp"].to_numpy(np.int64)[by_member]
    counts = {"items": len(items), "members": len(users), "interactions": len(inter)}
    for split in SPLITS:
        order = record_order(columns.count(split), split)
        if split == "train":
            at = columns.train_at[order]
            arrays = [columns.member[at], columns.end(at), item_rows[at],
                      _ragged(columns.negative_offsets, item_rows[columns.negatives], order), times[at]]
            schema = TRAIN_SCHEMA
        else:
            at = columns.eval_first[split][order]
            arrays = [columns.member[at], columns.end(at),
                      _ragged(columns.target_offsets[split], item_rows[columns.targets[split]], order), times[at]]
            schema = EVAL_SCHEMA
        batch = pa.record_batch([a if isinstance(a, pa.Array) else pa.array(a, field.type)
                                 for a, field in zip(arrays, schema)], schema=schema)
        counts[split] = _write_table(out / f"{split}.arrow", iter([batch]), schema)

    created_at, authors = data.created_at[corpus], np.asarray(data.authors, dtype=object)[corpus]

    def item_batches():
        done = 0
        with tqdm(total=len(items), desc=f"{tables.name} item prompts", unit="item", disable=not progress,
                  mininterval=1.0, leave=False) as bar:  # closed (its line cleared) on an error too
            for rendered in rendered_items:
                n = rendered.num_rows
                yield pa.record_batch([*rendered.columns, pa.array(created_at[done:done + n], pa.int64()),
                                       pa.array(authors[done:done + n].tolist(), pa.large_string())],
                                      schema=ITEM_SCHEMA)  # not slices of one array: those pad differently
                done += n
                bar.update(n)

    _write_table(out / "items.arrow", item_batches(), ITEM_SCHEMA)

    cohort = pa.array(np.where(columns.cohort_new, "new", "established").tolist(), pa.string())

    def member_batches():
        done = 0
        for rendered in rendered_members:
            n = rendered.num_rows
            yield pa.record_batch([rendered.column(0), cohort.slice(done, n), rendered.column(1),
                                   pa.array(bounds[done:done + n], pa.int64()),
                                   pa.array(bounds[done + 1:done + 1 + n], pa.int64())], schema=MEMBER_SCHEMA)
            done += n

    _write_table(out / "members.arrow", member_batches(), MEMBER_SCHEMA)
    return counts


def _check_history(columns, max_history: int | None) -> None:
    """Records name a history by its end in the member's timeline: it must start there."""
    if max_history is not None and (columns.end(columns.train_at) > max_history).any():
        raise ValueError("temporal_split(max_history=...) histories cannot be stored; prompts truncate to "
                         "PromptTemplate.max_history_items and the token budget instead")


def is_complete(root: Path) -> bool:
    return (Path(root) / METADATA).is_file()


def read_metadata(root: Path) -> dict:
    return json.loads((Path(root) / METADATA).read_text())


def open_table(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped: its pages are read from disk when touched."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
