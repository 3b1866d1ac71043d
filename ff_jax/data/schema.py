"""The generic input schema: what the users, items and interactions tables hold.

Every dataset (MovieLens, the feed_world simulator, a user's own CSV or Parquet files) is
described by one `TableSchema`: per table, its columns and their kinds. The kinds tell the
rest of ff_jax what to do with a column: text goes into prompts as written, categorical
values are short labels, numeric columns are quantised into percentile tags, timestamps
are unix seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np
import pandas as pd

TABLES = ("users", "items", "interactions")
KINDS = ("id", "text", "categorical", "numeric", "timestamp", "bool")
# Cells that mean "missing" in numeric, timestamp and bool columns, compared after trimming spaces
# and lower-casing (so NaN, NA, N/A, NULL, None too), also when a column's kind is inferred; text,
# categorical and id cells are kept as written. docs/data_tables.md lists them.
MISSING_VALUES = frozenset({"", "nan", "+nan", "-nan", "na", "n/a", "null", "none"})


def is_missing(text: pd.Series) -> pd.Series:
    """Which cells of a column of strings are a missing-value token (MISSING_VALUES)."""
    return text.str.strip().str.lower().isin(MISSING_VALUES)


@dataclass(frozen=True)
class Column:
    """One column of one table.

    min_value: numeric columns only; a smaller value is absurd (e.g. a negative count) and
    is replaced by "missing" (counted in the LoadSummary).
    """

    name: str
    kind: str
    required: bool = False
    min_value: float | None = None
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column '{self.name}': unknown kind '{self.kind}' (expected one of {KINDS})")
        if self.min_value is not None and self.kind != "numeric":
            raise ValueError(f"column '{self.name}': min_value only applies to numeric columns")


# The columns every dataset has. Everything else is declared per dataset.
BASE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "users": (Column("user_id", "id", required=True, description="unique member id"),),
    "items": (
        Column("item_id", "id", required=True, description="unique item id"),
        Column("text", "text", required=True, description="the item's main text; items without text are dropped"),
        Column("created_at", "timestamp", description="when the item was published"),
    ),
    "interactions": (
        Column("user_id", "id", required=True, description="a user_id of the users table"),
        Column("item_id", "id", required=True, description="an item_id of the items table"),
        Column("timestamp", "timestamp", required=True, description="when the impression happened"),
        Column("engaged", "bool", description="engaged (true) or impressed but not engaged (false); "
                                              "absent = every row is an engagement"),
    ),
}


@dataclass(frozen=True)
class TableSchema:
    """Columns of the three tables. Build one with `generic_schema(...)` or `infer_schema(...)`."""

    users: tuple[Column, ...] = BASE_COLUMNS["users"]
    items: tuple[Column, ...] = BASE_COLUMNS["items"]
    interactions: tuple[Column, ...] = BASE_COLUMNS["interactions"]

    def __post_init__(self):
        for table in TABLES:
            names = [c.name for c in self.table(table)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{table}: column(s) declared twice: {dupes}")
            for base in BASE_COLUMNS[table]:
                if base.required and base.name not in names:
                    raise ValueError(f"{table}: the schema must declare required column '{base.name}'")

    def table(self, table: str) -> tuple[Column, ...]:
        if table not in TABLES:
            raise ValueError(f"unknown table '{table}' (expected one of {TABLES})")
        return getattr(self, table)

    def column(self, table: str, name: str) -> Column:
        for col in self.table(table):
            if col.name == name:
                return col
        raise KeyError(f"{table} has no column '{name}'")

    def names(self, table: str, kind: str | None = None) -> list[str]:
        """Column names of a table, optionally only those of one kind."""
        return [c.name for c in self.table(table) if kind is None or c.kind == kind]

    def required(self, table: str) -> list[str]:
        return [c.name for c in self.table(table) if c.required]

    def with_columns(self, table: str, *columns: Column) -> TableSchema:
        """A copy with columns added (or replaced, matched by name)."""
        new = {c.name: c for c in columns}
        kept = tuple(c for c in self.table(table) if c.name not in new)
        return replace(self, **{table: kept + tuple(columns)})

    def without_columns(self, table: str, *names: str) -> TableSchema:
        return replace(self, **{table: tuple(c for c in self.table(table) if c.name not in names)})

    # Serialisation: the schema travels with datasets and serving bundles.
    def to_dict(self) -> dict:
        return {t: [asdict(c) for c in self.table(t)] for t in TABLES}

    @classmethod
    def from_dict(cls, data: dict) -> TableSchema:
        unknown = set(data) - set(TABLES)
        if unknown:
            raise ValueError(f"schema: unknown table(s) {sorted(unknown)}")
        return cls(**{t: tuple(Column(**c) for c in data.get(t, [])) or BASE_COLUMNS[t] for t in TABLES})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TableSchema:
        return cls.from_dict(json.loads(text))


def generic_schema(users: Iterable[Column] = (), items: Iterable[Column] = (),
                   interactions: Iterable[Column] = ()) -> TableSchema:
    """The base columns plus a dataset's own columns."""
    schema = TableSchema()
    for table, extra in (("users", users), ("items", items), ("interactions", interactions)):
        extra = tuple(extra)
        if extra:
            schema = schema.with_columns(table, *extra)
    return schema


def _looks_numeric(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values[~is_missing(values.astype(str))]  # a 'nan' or 'NA' cell does not make a column text
    return len(present) > 0 and pd.to_numeric(present, errors="coerce").notna().all()


def infer_column(name: str, values: pd.Series, max_categories: int = 64) -> Column:
    """Guess one undeclared column's kind (documented in docs/data_tables.md).

    Names ending in _at / _time / _date are timestamps; *_count columns are numeric with
    min_value 0; bool dtypes are bool; other numbers are numeric (missing-value cells, see
    MISSING_VALUES, aside); strings with at most
    `max_categories` distinct values (or shorter than 4 words on average and repeated) are
    categorical; other strings are text.
    """
    if name.endswith(("_at", "_time", "_date")):
        return Column(name, "timestamp")
    if pd.api.types.is_bool_dtype(values):
        return Column(name, "bool")
    if _looks_numeric(values):
        return Column(name, "numeric", min_value=0.0 if name.endswith("_count") else None)
    text = values.astype(str)
    distinct = text.nunique()
    if distinct <= max_categories:
        return Column(name, "categorical")
    mean_words = float(np.mean(text.str.split().str.len())) if len(text) else 0.0
    if mean_words < 4 and distinct < 0.5 * len(text):
        return Column(name, "categorical")
    return Column(name, "text")


def infer_schema(users: pd.DataFrame, items: pd.DataFrame, interactions: pd.DataFrame,
                 declared: TableSchema | None = None) -> TableSchema:
    """The declared schema (default: the base columns) plus a guess for every other column."""
    schema = declared or TableSchema()
    for table, frame in (("users", users), ("items", items), ("interactions", interactions)):
        known = set(schema.names(table))
        guesses = [infer_column(name, frame[name]) for name in frame.columns if name not in known]
        if guesses:
            schema = schema.with_columns(table, *guesses)
    return schema


def describe(schema: TableSchema) -> str:
    """A Markdown table of the schema's columns."""
    lines = ["| table | column | kind | required | notes |", "|---|---|---|---|---|"]
    for table in TABLES:
        for c in schema.table(table):
            notes = c.description + (f" (min {c.min_value:g})" if c.min_value is not None else "")
            lines.append(f"| {table} | `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} | {notes} |")
    return "\n".join(lines)
