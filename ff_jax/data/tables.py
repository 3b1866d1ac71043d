"""FeedTables (users, items, interactions) and `load_tables`: read, validate, report.

Every dataset goes through `validate_tables`, whether it comes from CSV / Parquet files
(`load_tables`), from the MovieLens adapter or from the simulator. Bad input is either
rejected with a `LoadError` naming the file, row and field, or repaired by a documented
rule that the `LoadSummary` counts (docs/data_tables.md lists the rules).
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ff_jax.data import tables_checks as checks
from ff_jax.data.load_errors import LoadError, NotEnoughData
from ff_jax.data.load_report import LoadSummary, TableReport
from ff_jax.data.schema import Column, TableSchema, infer_schema
from ff_jax.data.tables_options import TablesOptions
from ff_jax.data.text_template import TemplateError, apply_text_template, no_text_hint


@dataclass
class FeedTables:
    """A dataset in the generic shape (docs/data_tables.md, "The generic schema").

    users:        'user_id' (str, unique) + profile columns
    items:        'item_id' (str, unique), 'text' (str), optional 'created_at' (int64 unix s), ...
    interactions: 'user_id', 'item_id' (str), 'timestamp' (int64 unix s), 'engaged' (bool),
                  sorted by time; rows with equal timestamps keep their input order.
    meta:         provenance, e.g. which split the item statistics were computed on.
    """

    name: str
    users: pd.DataFrame
    items: pd.DataFrame
    interactions: pd.DataFrame
    schema: TableSchema
    summary: LoadSummary
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        n_pos = int(self.interactions["engaged"].sum())
        return (f"FeedTables('{self.name}': {len(self.users):,} users, {len(self.items):,} items, "
                f"{len(self.interactions):,} interactions of which {n_pos:,} engaged)")


def _decode(data: bytes, source: str, encoding_errors: str, report: TableReport, encoding: str = "utf-8") -> str:
    """Decode with `encoding`; a bad byte is an error naming line and field, or (with "replace") U+FFFD.
    A leading UTF-8 byte-order mark (Excel writes one) is dropped so the first header stays readable."""
    if encoding_errors not in ("strict", "replace"):
        raise ValueError(f"encoding_errors must be 'strict' or 'replace', not {encoding_errors!r}")
    pieces, start, bad_lines = [], 0, set()
    while True:
        try:
            pieces.append(data[start:].decode(encoding))
            break
        except UnicodeDecodeError as err:
            at = start + err.start
            line_no = data.count(b"\n", 0, at) + 1
            if encoding_errors == "strict":
                line_start = data.rfind(b"\n", 0, at) + 1
                header = data[: data.find(b"\n")].decode("utf-8", "replace").split(checks.delimiter(source))
                col = data.count(checks.delimiter(source).encode(), line_start, at)
                name = header[col] if col < len(header) else f"#{col + 1}"
                raise LoadError(f"{source} line {line_no} (row {line_no - 1}), field '{name}': "
                                f"bytes that are not {_codec_name(encoding)} at byte offset {at} (re-encode the "
                                "file, set TablesOptions.encoding to its codec, or load with "
                                "encoding_errors='replace')") from None
            pieces.append(data[start:at].decode(encoding))
            pieces.append("\ufffd")
            bad_lines.add(line_no)
            start = at + (err.end - err.start)
    if bad_lines:
        report.change(f"non-{_codec_name(encoding)} bytes replaced by U+FFFD", len(bad_lines),
                      f"line {min(bad_lines)}")
    text = "".join(pieces)
    return text[1:] if text.startswith("\ufeff") else text


def _codec_name(encoding: str) -> str:
    name = codecs.lookup(encoding).name  # "utf-8", "iso8859-1", ...
    return "UTF-8" if name == "utf-8" else name


def read_table_file(path: str | Path, report: TableReport, encoding_errors: str = "strict",
                    encoding: str = "utf-8") -> pd.DataFrame:
    """Read one CSV / TSV (optionally .gz) or Parquet file. CSV cells are read as text and typed later."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if name.endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
    elif name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz")):
        raw = path.read_bytes()
        if name.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = _decode(raw, str(path), encoding_errors, report, encoding)
        try:
            frame = pd.read_csv(io.StringIO(text), sep=checks.delimiter(name), dtype=str,
                                keep_default_na=False, na_filter=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise LoadError(f"{path}: not a readable table: {err}") from None
    else:
        raise LoadError(f"{path}: unknown format (expected .csv, .tsv, .csv.gz or .parquet)")
    report.rows_read = len(frame)
    return frame


def _no_rows(report: TableReport, summary: LoadSummary) -> NotEnoughData:
    """The error for a table left empty: empty as given, or emptied by the rules (then the summary says why)."""
    if not report.rows_read:
        return NotEnoughData(f"{report.source}: no rows (a header only, or an empty table); the {report.table} "
                             "table needs at least one")
    return NotEnoughData(f"{report.source}: no usable {report.table} row: all {report.rows_read:,} were dropped; "
                         f"what the loader dropped and why:\n{summary}")


def validate_tables(users: pd.DataFrame, items: pd.DataFrame, interactions: pd.DataFrame,
                    schema: TableSchema | None = None, name: str = "dataset",
                    sources: dict[str, str] | None = None, summary: LoadSummary | None = None,
                    encoding_errors: str = "strict", options: TablesOptions | None = None) -> FeedTables:
    """Type, check and repair three frames by the documented rules; the one gate into FeedTables.

    schema=None infers the kinds of undeclared columns (see schema.infer_column). With a
    schema, columns it does not declare are ignored (noted in the summary). options: the rules
    for shapes outside the schema (ratings instead of `engaged`, ids as numbers; TablesOptions).
    Interactions without a `timestamp` column are in time order as written (rule: timestamp =
    row number). A table left without rows, or interactions without one engagement, is a
    NotEnoughData error naming the file.
    """
    options = options or TablesOptions()
    sources = sources or {t: f"{name}:{t}" for t in ("users", "items", "interactions")}
    summary = summary or LoadSummary(name)
    timestamp_note = None
    if "timestamp" not in interactions.columns:  # file order is time order; only order matters to splits
        interactions = interactions.assign(timestamp=np.arange(1, len(interactions) + 1, dtype=np.int64))
        timestamp_note = ("no 'timestamp' column: rows are taken to be in time order as written "
                          "(timestamp = row number, in seconds after 1970-01-01)")
    schema = _with_rating(schema, interactions, options, sources["interactions"])
    users, items, template_notes = _text_from_templates(users, items, options, sources)
    frames = {"users": users, "items": items, "interactions": interactions}
    for table, frame in frames.items():
        report = summary.tables.setdefault(table, TableReport(table, sources[table]))
        if not report.rows_read:
            report.rows_read = len(frame)
        missing = [c for c in (schema or TableSchema()).required(table) if c not in frame.columns]
        if missing:
            hint = f"; {no_text_hint(list(frame.columns))}" if (table, missing) == ("items", ["text"]) else ""
            raise LoadError(f"{sources[table]}: missing required column(s) {missing} "
                            f"(found: {list(frame.columns)}){hint}")
    schema = schema or infer_schema(users, items, interactions)
    for table, notes in template_notes.items():
        summary[table].notes.extend(notes)
    if timestamp_note:
        summary["interactions"].notes.append(timestamp_note)

    typed = {}
    for table, frame in frames.items():
        report = summary.tables[table]
        ignored = [c for c in frame.columns if c not in schema.names(table)]
        if ignored:
            report.notes.append(f"columns not in the schema, ignored: {ignored}")
        absent = [c for c in schema.names(table) if c not in frame.columns]
        for col in absent:
            if (table, col) == ("interactions", "engaged"):
                if options.rating_threshold is None:  # with a threshold: noted where that rule applies
                    hint = (f"; its '{options.rating_column}' column is unused (see TablesOptions.rating_threshold)"
                            if options.rating_column in frame.columns else "")
                    report.notes.append(f"no 'engaged' column: every interaction counts as an engagement{hint}")
            else:
                report.notes.append(f"optional column '{col}' absent")
            schema = schema.without_columns(table, col)
        frame = frame[[c for c in schema.names(table)]].copy()
        frame.index = pd.RangeIndex(len(frame))  # index = source row (0-based) for messages
        typed[table] = checks.coerce_columns(frame, schema.table(table), report, sources[table],
                                              encoding_errors)

    if options.rating_threshold is not None:
        typed["interactions"] = checks.engaged_from_rating(
            typed["interactions"], options.rating_column, options.rating_threshold, summary["interactions"],
            sources["interactions"])
        summary["interactions"].notes.append(f"no 'engaged' column: engaged = {options.rating_column} >= "
                                             f"{options.rating_threshold:g} (TablesOptions.rating_threshold)")
    if "engaged" not in typed["interactions"].columns:
        typed["interactions"]["engaged"] = True
    if "engaged" not in schema.names("interactions"):
        schema = schema.with_columns("interactions", *[c for c in TableSchema().interactions
                                                       if c.name == "engaged"])
    if options.numeric_ids:
        for table, id_cols in (("users", ["user_id"]), ("items", ["item_id"]),
                               ("interactions", ["user_id", "item_id"])):
            for col in id_cols:
                typed[table][col] = checks.numeric_ids(typed[table][col], typed[table], col, summary[table],
                                                       sources[table])

    users = checks.dedupe_ids(typed["users"], "user_id", summary["users"], sources["users"])
    items = checks.dedupe_ids(typed["items"], "item_id", summary["items"], sources["items"])
    items = checks.drop_rows(items, items["text"].str.strip() == "", "item with no text", "text",
                             summary["items"], sources["items"])
    for table, frame in (("users", users), ("items", items)):
        summary[table].rows_kept = len(frame)
        if frame.empty:
            raise _no_rows(summary[table], summary)

    def lost(before: pd.Series, after: pd.Series) -> pd.Series:
        return before[checks.index_in(before, after) < 0]

    dropped_ids = {"user_id": lost(typed["users"]["user_id"], users["user_id"]),
                   "item_id": lost(typed["items"]["item_id"], items["item_id"])}
    known = {"user_id": users["user_id"], "item_id": items["item_id"]}
    if not options.numeric_ids:  # ids compare as text; say so when numbers would have matched
        for key in known:
            hint = checks.numeric_id_hint(typed["interactions"][key], known[key], key)
            if hint:
                summary["interactions"].notes.append(hint)
    inter = checks.check_interactions(typed["interactions"], known, dropped_ids, summary["interactions"],
                                      sources["interactions"])
    summary["interactions"].rows_kept = len(inter)
    if inter.empty:
        raise _no_rows(summary["interactions"], summary)
    if not inter["engaged"].any():  # impressions only: no positive to train on or hold out
        raise NotEnoughData(f"{sources['interactions']}: no engaged interaction among its {len(inter):,} usable rows "
                            f"(every one is engaged=false): there is nothing to train on or evaluate; the "
                            f"load summary:\n{summary}")

    idle = int((checks.index_in(users["user_id"], inter["user_id"].unique()) < 0).sum())
    if idle:
        summary["users"].notes.append(f"{idle:,} users have no interactions (kept: they can be embedded "
                                      "as cold-start members, but no split evaluates them)")
    unseen = int((checks.index_in(items["item_id"], inter["item_id"].unique()) < 0).sum())
    if unseen:
        summary["items"].notes.append(f"{unseen:,} items have no interactions (kept in the corpus)")
    return FeedTables(name, users.reset_index(drop=True), items.reset_index(drop=True),
                      inter.reset_index(drop=True), schema, summary)


def _text_from_templates(users: pd.DataFrame, items: pd.DataFrame, options: TablesOptions,
                         sources: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """TablesOptions.item_text / user_text: the `text` column made from other columns (text_template),
    and the load summary's notes on it per table."""
    notes: dict[str, list[str]] = {"users": [], "items": []}
    try:
        if options.item_text is not None:
            items, notes["items"] = apply_text_template(items, options.item_text, sources["items"],
                                                        "TablesOptions.item_text")
        if options.user_text is not None:
            users, notes["users"] = apply_text_template(users, options.user_text, sources["users"],
                                                        "TablesOptions.user_text")
    except TemplateError as err:
        raise LoadError(str(err)) from None
    return users, items, notes


def _with_rating(schema: TableSchema | None, interactions: pd.DataFrame, options: TablesOptions,
                 source: str) -> TableSchema | None:
    """Checks the rating rule applies, and declares the rating column numeric when a schema omits it."""
    if options.rating_threshold is None:
        return schema
    column = options.rating_column
    if "engaged" in interactions.columns:
        raise LoadError(f"{source}: has an 'engaged' column and TablesOptions.rating_threshold="
                        f"{options.rating_threshold:g} is set; use one of them")
    if column not in interactions.columns:
        raise LoadError(f"{source}: TablesOptions.rating_threshold needs a '{column}' column "
                        f"(found: {list(interactions.columns)}; TablesOptions.rating_column names it)")
    if schema is None or column not in schema.names("interactions"):
        return schema and schema.with_columns("interactions", Column(column, "numeric"))
    if schema.column("interactions", column).kind != "numeric":
        raise LoadError(f"{source}: the schema declares '{column}' as "
                        f"{schema.column('interactions', column).kind}; a rating must be numeric")
    return schema


def load_tables(users_path: str | Path, items_path: str | Path, interactions_path: str | Path,
                schema: TableSchema | str | Path | None = None, name: str | None = None,
                encoding_errors: str | None = None, options: TablesOptions | None = None) -> FeedTables:
    """Load a dataset in the generic schema from CSV / TSV / Parquet files (any mix).

    schema: the columns and their kinds (a TableSchema or the path of its JSON); None keeps
        every column and infers its kind.
    encoding_errors: "strict" (default) rejects bytes the codec cannot read, naming line and
        field; "replace" turns them into U+FFFD and counts the lines in the summary. Overrides
        options.encoding_errors when given.
    options: encoding, rating threshold, ids as numbers (TablesOptions; docs/data_tables.md).
    """
    options = options or TablesOptions()
    if encoding_errors is not None:
        options = dataclasses.replace(options, encoding_errors=encoding_errors)
    if isinstance(schema, (str, Path)):
        schema = TableSchema.from_json(Path(schema).read_text())
    paths = {"users": users_path, "items": items_path, "interactions": interactions_path}
    summary = LoadSummary(name or Path(items_path).parent.name or "dataset")
    frames = {}
    for table, path in paths.items():
        report = summary.tables.setdefault(table, TableReport(table, str(path)))
        frames[table] = read_table_file(path, report, options.encoding_errors, options.encoding)
    return validate_tables(frames["users"], frames["items"], frames["interactions"], schema,
                           summary.name, {t: str(p) for t, p in paths.items()}, summary,
                           options.encoding_errors, options)
