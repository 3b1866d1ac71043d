"""Percentile quantiser: numbers become `<view_percentile>71</view_percentile>` tags.

Fitted on the training split, it stores the 1st..99th percentiles of each numeric column
(numpy.percentile, linear interpolation). A value's bucket is 1 + the number of those
percentiles it reaches (searchsorted, side="right"), so buckets run 1..100, values below
the training minimum land in 1 and above the maximum in 100. Missing values get no tag.

Modes, for the ablation: "quantile" (default) the bucket; "raw" the number itself as text
in a `raw_tag`; "absent" nothing at all. The quantiser is a JSON document, shipped in the
serving bundle so serving renders numbers exactly as training did.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ff_jax.data.splits import TRAIN
from ff_jax.data.tables_checks import index_in

MODES = ("quantile", "raw", "absent")
PERCENTILES = np.arange(1, 100)
_TAG = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FORMAT_VERSION = 1


def default_tag(column: str) -> str:
    """view_count → view_percentile, mean_rating → mean_rating_percentile."""
    return (column[: -len("_count")] if column.endswith("_count") else column) + "_percentile"


@dataclass(frozen=True)
class FeatureBuckets:
    column: str
    tag: str                 # quantile mode: <tag>71</tag>
    raw_tag: str             # raw mode: <raw_tag>1234</raw_tag>
    edges: tuple[float, ...]  # the 1st..99th training percentiles
    n_fit: int               # finite training values the edges come from

    def __post_init__(self):
        for name in (self.tag, self.raw_tag):
            if not _TAG.match(name):
                raise ValueError(f"quantiser: tag {name!r} for column '{self.column}' must be a plain "
                                 "identifier (letters, digits, underscores)")
        if len(self.edges) != len(PERCENTILES):
            raise ValueError(f"quantiser: column '{self.column}' needs {len(PERCENTILES)} edges, got {len(self.edges)}")


def _raw_text(values: np.ndarray) -> list[str]:
    """Whole numbers as integers, others with 4 significant digits (no exponents below 1e6)."""
    out = []
    for v in values.tolist():
        if float(v).is_integer() or abs(v) >= 1000:
            out.append(str(int(round(v))))
        else:
            out.append(f"{v:.4g}")
    return out


@dataclass
class Quantizer:
    features: dict[str, FeatureBuckets] = field(default_factory=dict)
    mode: str = "quantile"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"quantiser mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str] | None = None, tags: Mapping[str, str] | None = None,
            raw_tags: Mapping[str, str] | None = None, mode: str = "quantile") -> Quantizer:
        """Percentile edges of each numeric column of `frame` (NaN and inf ignored).

        columns: default every numeric column; tags / raw_tags: per-column tag names
        (default `default_tag(column)` and the column name).
        """
        columns = list(columns) if columns is not None else [
            c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
        tags, raw_tags = dict(tags or {}), dict(raw_tags or {})
        unknown = (set(tags) | set(raw_tags)) - set(columns)
        if unknown:
            raise ValueError(f"quantiser: tags given for columns it does not fit: {sorted(unknown)}")
        features = {}
        for column in columns:
            if column not in frame.columns:
                raise KeyError(f"quantiser: no column '{column}' to fit (have {list(frame.columns)})")
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
            values = values[np.isfinite(values)]
            if len(values) == 0:
                raise ValueError(f"quantiser: column '{column}' has no finite training value to fit")
            edges = np.percentile(values, PERCENTILES)
            features[column] = FeatureBuckets(column, tags.get(column, default_tag(column)),
                                              raw_tags.get(column, column), tuple(map(float, edges)), len(values))
        return cls(features, mode)

    def with_mode(self, mode: str) -> Quantizer:
        return Quantizer(self.features, mode)

    def _feature(self, column: str) -> FeatureBuckets:
        try:
            return self.features[column]
        except KeyError:
            raise KeyError(f"quantiser was not fitted on column '{column}' (fitted: {sorted(self.features)})") from None

    def bucket(self, column: str, values) -> np.ndarray:
        """Percentile bucket 1..100 per value; 0 where the value is missing or not finite."""
        values = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
        edges = np.asarray(self._feature(column).edges)
        buckets = 1 + np.searchsorted(edges, values, side="right")
        return np.where(np.isfinite(values), buckets, 0)

    def render(self, column: str, values: pd.Series) -> pd.Series:
        """Tagged text per value: "<tag>71</tag>" (quantile), "<raw_tag>1234</raw_tag>" (raw), "" (absent/missing)."""
        values = pd.Series(values)
        feature = self._feature(column)
        out = pd.Series("", index=values.index, dtype=object)
        if self.mode == "absent" or len(values) == 0:
            return out
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(float)
        if self.mode == "quantile":  # 100 possible texts: look them up rather than format each value
            tag = feature.tag
            texts = np.array([""] + [f"<{tag}>{b}</{tag}>" for b in range(1, len(PERCENTILES) + 2)], dtype=object)
            return pd.Series(texts[self.bucket(column, numbers)], index=values.index, dtype=object)
        present = np.isfinite(numbers)
        tag, text = feature.raw_tag, _raw_text(numbers[present])
        out[present] = [f"<{tag}>{t}</{tag}>" for t in text]
        return out

    def render_value(self, column: str, value) -> str:
        return self.render(column, pd.Series([value])).iloc[0]

    def markers(self) -> list[str]:
        """The tags this mode writes (register them with `tokenizer.add_special_tokens`)."""
        if self.mode == "absent":
            return []
        names = [f.tag if self.mode == "quantile" else f.raw_tag for f in self.features.values()]
        return [m for name in names for m in (f"<{name}>", f"</{name}>")]

    # Serialisation: one JSON document.
    def to_dict(self) -> dict:
        return {"format": "ff_jax.quantizer", "version": FORMAT_VERSION, "mode": self.mode,
                "percentiles": PERCENTILES.tolist(),
                "features": [{"column": f.column, "tag": f.tag, "raw_tag": f.raw_tag, "edges": list(f.edges),
                              "n_fit": f.n_fit} for f in self.features.values()]}

    @classmethod
    def from_dict(cls, data: dict) -> Quantizer:
        if data.get("format") != "ff_jax.quantizer" or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not an ff_jax quantiser (version {FORMAT_VERSION}) document: "
                             f"format={data.get('format')!r}, version={data.get('version')!r}")
        features = {f["column"]: FeatureBuckets(f["column"], f["tag"], f["raw_tag"], tuple(f["edges"]), f["n_fit"])
                    for f in data["features"]}
        return cls(features, data["mode"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Quantizer:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Quantizer:
        return cls.from_json(Path(path).read_text())


def _used(ids: pd.Series, column: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Which of `ids` appear in `column` at the `rows` mask (Arrow hashing: pandas' isin on Arrow
    strings loops in Python)."""
    found = index_in(column[rows], ids)
    used = np.zeros(len(ids), dtype=bool)
    used[found[found >= 0]] = True
    return used


def fit_on_training(tables, splits, tags: Mapping[str, str] | None = None, mode: str = "quantile") -> Quantizer:
    """Fit every numeric user and item column on the rows the training split uses.

    Items: those in training-period interactions; users: those with a training example.
    """
    train = splits.period == TRAIN
    items = tables.items[_used(tables.items["item_id"], tables.interactions["item_id"], train)]
    users = tables.users[_used(tables.users["user_id"], tables.interactions["user_id"], train)]
    user_cols, item_cols = tables.schema.names("users", "numeric"), tables.schema.names("items", "numeric")
    clash = set(user_cols) & set(item_cols)
    if clash:
        raise ValueError(f"quantiser: users and items share numeric column names {sorted(clash)}; rename one")
    tags = dict(tags or {})
    parts = [Quantizer.fit(frame, cols, {c: tags[c] for c in cols if c in tags}, mode=mode)
             for frame, cols in ((users, user_cols), (items, item_cols)) if cols]
    return Quantizer({name: f for q in parts for name, f in q.features.items()}, mode)
