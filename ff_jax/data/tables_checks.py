"""Column typing and the bad-input rules behind `validate_tables` (vectorised: 1M-row tables in seconds).

A frame's index is its source row (0-based) while it passes through here, so every error
and every summary example can name the file, row and field.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ff_jax.data.load_errors import LoadError
from ff_jax.data.load_report import TableReport
from ff_jax.data.schema import MISSING_VALUES, Column, is_missing

# Timestamps outside [1970-01-01, 2200-01-01) are absurd for a feed.
MAX_TIMESTAMP = 7_258_118_400
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})


def _arrow_strings(values) -> pa.Array:
    """One contiguous Arrow string array. A large Arrow-backed pandas column (a Parquet file read in
    row groups) converts to a ChunkedArray, which has no `.indices` after encoding: combine it."""
    values = values.array if isinstance(values, pd.Series) else values
    array = pa.array(values, from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.cast(pa.large_string())


def index_in(values, universe) -> np.ndarray:
    """Position of each value in `universe` (−1 when absent). Arrow hashing: pandas' isin on
    Arrow-backed strings loops in Python, 10× slower on millions of rows."""
    found = pc.index_in(_arrow_strings(values), value_set=_arrow_strings(universe))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def factorize(values) -> np.ndarray:
    """Integer codes, equal for equal strings (Arrow dictionary encoding)."""
    encoded = pc.dictionary_encode(_arrow_strings(values))
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def all_unique(values: pd.Series) -> bool:
    return len(pc.unique(_arrow_strings(values))) == len(values)


def delimiter(name: str) -> str:
    return "\t" if ".tsv" in name.lower() else ","


def where(source: str, row: int) -> str:
    """'users.csv row 3 (line 4)': rows count data rows from 1; CSV line 1 is the header."""
    if ".csv" in source.lower() or ".tsv" in source.lower():
        return f"{source} row {row + 1} (line {row + 2})"
    return f"{source} row {row + 1}"


def _show(value) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _example(source: str, frame: pd.DataFrame, mask: pd.Series | np.ndarray, field: str) -> str:
    row = frame.index[np.asarray(mask)][0]
    return f"{where(source, row)}, field '{field}': {_show(frame.at[row, field])}"


def _error(source: str, frame: pd.DataFrame, bad: pd.Series, field: str, what: str) -> None:
    n = int(bad.sum())
    more = f" ({n - 1:,} more rows like it)" if n > 1 else ""
    raise LoadError(f"{_example(source, frame, bad, field)} {what}{more}")


def _decode_bytes(s: pd.Series, source: str, encoding_errors: str) -> pd.Series:
    """Parquet binary columns arrive as bytes; decode them under the same UTF-8 rule as CSV files."""
    if s.dtype != object:
        return s
    is_bytes = s.map(lambda v: isinstance(v, (bytes, bytearray)))
    if not is_bytes.any():
        return s
    out = s.copy()
    for row in s.index[is_bytes]:
        try:
            out.at[row] = bytes(s.at[row]).decode("utf-8")
        except UnicodeDecodeError:
            if encoding_errors == "strict":
                frame = s.to_frame()
                _error(source, frame, pd.Series(s.index == row, index=s.index), s.name,
                       "holds bytes that are not UTF-8 (re-encode, or load with encoding_errors='replace')")
            out.at[row] = bytes(s.at[row]).decode("utf-8", "replace")
    return out


def as_text(s: pd.Series) -> pd.Series:
    """Any column as strings; missing → ''. Whole floats print without '.0' (Parquet ids, zip codes)."""
    if pd.api.types.is_bool_dtype(s):
        return s.map({True: "true", False: "false"}).fillna("").astype(str)
    if pd.api.types.is_integer_dtype(s):
        return s.astype(str)
    if pd.api.types.is_float_dtype(s):
        return s.map(lambda v: "" if pd.isna(v) else (str(int(v)) if float(v).is_integer() else repr(float(v))))
    if pd.api.types.is_string_dtype(s) and s.dtype != object:
        return s.fillna("") if s.hasnans else s
    return s.astype(object).where(s.notna(), "").astype(str)


def _numbers(s: pd.Series, frame: pd.DataFrame, field: str, source: str) -> pd.Series:
    """Floats with NaN for missing; a cell that is not a number is an error."""
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float)
    text = as_text(s).str.strip()
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() & ~is_missing(text)
    if bad.any():
        _error(source, frame, bad, field, "is not a number")
    return values.astype(float)


def _seconds(s: pd.Series, frame: pd.DataFrame, field: str, source: str) -> pd.Series:
    """Unix seconds (float, NaN = missing) from numbers, ISO-8601 strings or datetime columns."""
    if pd.api.types.is_datetime64_any_dtype(s):
        dt = pd.to_datetime(s, utc=True)
        return (dt - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    text = as_text(s).str.strip()
    values = pd.to_numeric(text, errors="coerce").astype(float)
    dated = values.isna() & ~is_missing(text)
    if dated.any():
        parsed = pd.to_datetime(text[dated], utc=True, errors="coerce", format="ISO8601")
        values[dated] = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        bad = pd.Series(False, index=s.index)
        bad[dated] = parsed.isna()
        if bad.any():
            _error(source, frame, bad, field, "is not a timestamp (unix seconds or ISO-8601)")
    return values


def _bools(s: pd.Series, frame: pd.DataFrame, field: str, source: str) -> pd.Series:
    """Nullable booleans from bool / 0-1 / true-false-yes-no cells."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype("boolean")
    text = as_text(s).str.strip().str.lower()
    text = text.str.replace(r"\.0$", "", regex=True)  # 1.0 / 0.0 from float columns
    out = pd.Series(pd.NA, index=s.index, dtype="boolean")
    out[text.isin(TRUE_WORDS)] = True
    out[text.isin(FALSE_WORDS)] = False
    bad = out.isna() & ~text.isin(MISSING_VALUES)
    if bad.any():
        _error(source, frame, bad, field, "is not a boolean (true/false, 1/0, yes/no)")
    return out


def drop_rows(frame: pd.DataFrame, mask, reason: str, field: str, report: TableReport,
              source: str) -> pd.DataFrame:
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        report.drop(reason, int(mask.sum()), _example(source, frame, mask, field))
        frame = frame[~mask]
    return frame


def coerce_columns(frame: pd.DataFrame, columns: tuple[Column, ...], report: TableReport, source: str,
                   encoding_errors: str = "strict") -> pd.DataFrame:
    """Give every declared column its kind's dtype, applying the rules for missing and absurd values."""
    for col in columns:
        name = col.name
        s = _decode_bytes(frame[name], source, encoding_errors)
        if col.kind in ("id", "text", "categorical"):
            frame[name] = as_text(s).str.strip() if col.kind == "id" else as_text(s)
            if col.kind == "id":
                frame = drop_rows(frame, frame[name] == "", f"missing {name}", name, report, source)
        elif col.kind == "numeric":
            values = _numbers(s, frame, name, source)
            missing = values.isna()
            report.change(f"missing or NaN '{name}' (kept as missing)", int(missing.sum()),
                          _example(source, frame, missing, name) if missing.any() else "")
            absurd = np.isinf(values) | ((values < col.min_value) if col.min_value is not None else False)
            if absurd.any():
                lower = f" or below {col.min_value:g}" if col.min_value is not None else ""
                report.change(f"absurd '{name}' (inf{lower}) set to missing", int(absurd.sum()),
                              _example(source, frame, absurd, name))
                values = values.mask(absurd)
            frame[name] = values
        elif col.kind == "timestamp":
            secs = _seconds(s, frame, name, source)
            missing = secs.isna()
            absurd = ~missing & (~np.isfinite(secs) | (secs < 0) | (secs >= MAX_TIMESTAMP))
            if col.required:
                frame = drop_rows(frame, missing, f"missing {name}", name, report, source)
                frame = drop_rows(frame, absurd[~missing], f"absurd {name} (outside 1970–2200)", name,
                                  report, source)
                frame[name] = np.floor(secs.loc[frame.index]).astype(np.int64)
            else:
                report.change(f"missing '{name}' (kept as missing)", int(missing.sum()),
                              _example(source, frame, missing, name) if missing.any() else "")
                if absurd.any():
                    report.change(f"absurd '{name}' (outside 1970–2200) set to missing", int(absurd.sum()),
                                  _example(source, frame, absurd, name))
                secs = np.floor(secs.mask(absurd))
                frame[name] = secs.astype("Int64") if secs.isna().any() else secs.astype(np.int64)
        elif col.kind == "bool":
            values = _bools(s, frame, name, source)
            if name == "engaged":  # the label: a row without it says nothing
                frame = drop_rows(frame, values.isna(), f"missing {name}", name, report, source)
                frame[name] = values.loc[frame.index].astype(bool)
            else:
                report.change(f"missing '{name}' (kept as missing)", int(values.isna().sum()),
                              _example(source, frame, values.isna(), name) if values.isna().any() else "")
                frame[name] = values
    return frame


def dedupe_ids(frame: pd.DataFrame, id_col: str, report: TableReport, source: str) -> pd.DataFrame:
    """Identical repeated rows are dropped (counted); one id with two different rows is an error."""
    if all_unique(frame[id_col]):
        return frame
    frame = drop_rows(frame, frame.duplicated(keep="first"), "duplicate row (identical to an earlier row)",
                      id_col, report, source)
    clash = frame[id_col].duplicated(keep=False)
    if clash.any():
        first_id = frame.loc[clash, id_col].iloc[0]
        rows = frame.index[frame[id_col] == first_id][:2]
        a, b = frame.loc[rows[0]], frame.loc[rows[1]]
        differ = next(c for c in frame.columns if not (a[c] == b[c] or (pd.isna(a[c]) and pd.isna(b[c]))))
        raise LoadError(f"duplicate {id_col} {first_id!r} at {where(source, rows[0])} and "
                        f"{where(source, rows[1])} with different '{differ}' ({_show(a[differ])} vs "
                        f"{_show(b[differ])}); ids must be unique ({int(clash.sum()):,} rows share ids)")
    return frame


def check_interactions(frame: pd.DataFrame, known: dict[str, pd.Series], dropped: dict[str, pd.Series],
                       report: TableReport, source: str) -> pd.DataFrame:
    """Drop rows pointing at unknown or dropped users/items and repeated rows; sort by time (stable)."""
    codes: dict[str, np.ndarray] = {}

    def drop(mask: np.ndarray, reason: str, field: str) -> None:
        nonlocal frame
        if mask.any():
            frame = drop_rows(frame, mask, reason, field, report, source)
            for key in codes:
                codes[key] = codes[key][~mask]

    for key, noun in (("user_id", "user"), ("item_id", "item")):
        codes[key] = index_in(frame[key], known[key])
        unknown = codes[key] < 0
        if unknown.any():
            drop(unknown & (index_in(frame[key], dropped[key]) >= 0), f"{key} of a dropped {noun}", key)
            drop(codes[key] < 0, f"unknown {key}", key)
    rows = pd.DataFrame({"u": codes["user_id"], "i": codes["item_id"], "t": frame["timestamp"].to_numpy(),
                         "e": frame["engaged"].to_numpy()})
    drop(rows.duplicated(keep="first").to_numpy(), "duplicate row (identical to an earlier row)", "user_id")
    if (np.diff(frame["timestamp"].to_numpy()) < 0).any():
        frame = frame.sort_values("timestamp", kind="stable")
    frame["timestamp"] = frame["timestamp"].astype(np.int64)
    frame["engaged"] = frame["engaged"].astype(bool)
    return frame


def engaged_from_rating(frame: pd.DataFrame, column: str, threshold: float, report: TableReport,
                        source: str) -> pd.DataFrame:
    """engaged = rating >= threshold (TablesOptions.rating_threshold); a row without a rating says
    nothing about engagement and is dropped, counted."""
    rating = _numbers(frame[column], frame, column, source)
    # These rows are dropped, not kept: coerce_columns' "kept as missing" count does not apply to them.
    kept_as_missing = f"missing or NaN '{column}' (kept as missing)"
    report.changed.pop(kept_as_missing, None)
    report.examples.pop(kept_as_missing, None)
    frame = drop_rows(frame, rating.isna(), f"missing {column} (needed by rating_threshold)", column, report,
                      source)
    frame["engaged"] = (rating.loc[frame.index] >= threshold).to_numpy()
    return frame


_WHOLE_NUMBER = r"\s*\+?\d+(?:\.0*)?\s*"


def _as_number_text(ids: pd.Series) -> pd.Series:
    """'007', '7.0', '+7' -> '7'; other ids unchanged."""
    text = as_text(ids)
    whole = text.str.fullmatch(_WHOLE_NUMBER)
    digits = text[whole].str.strip().str.lstrip("+").str.split(".").str[0].str.lstrip("0").replace("", "0")
    return text.mask(whole, digits)


def numeric_ids(ids: pd.Series, frame: pd.DataFrame, field: str, report: TableReport, source: str) -> pd.Series:
    """TablesOptions.numeric_ids: ids written as whole numbers compare as numbers (counted when rewritten)."""
    out = _as_number_text(ids)
    changed = (out != ids).to_numpy()
    if changed.any():
        report.change(f"'{field}' written as a number, compared as one (TablesOptions.numeric_ids)",
                      int(changed.sum()), _example(source, frame, changed, field))
    return out


def numeric_id_hint(ids: pd.Series, known: pd.Series, field: str) -> str | None:
    """A note when ids unknown as written would match as numbers ('007' vs 7): ids compare as text."""
    unknown = ids[index_in(ids, known) < 0]
    if unknown.empty:
        return None
    matches = index_in(_as_number_text(unknown), _as_number_text(known)) >= 0
    if not matches.any():
        return None
    first = unknown[matches].iloc[0]
    return (f"{int(matches.sum()):,} rows have a {field} unknown as written that matches as a number "
            f"(first: {first!r}); ids compare as text: write them alike in every file, or set "
            "TablesOptions.numeric_ids = True")
