"""The generic schema and load_tables: any dataset in the shape loads; every bad input has a rule or an error."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ff_jax.data.schema import Column, TableSchema, describe, generic_schema, infer_schema
from ff_jax.data.splits import temporal_split
from ff_jax.data.tables import LoadError, load_tables

SCHEMA = generic_schema(
    users=[Column("headline", "text"), Column("age", "numeric", min_value=0)],
    items=[Column("view_count", "numeric", min_value=0)],
)

USERS = "user_id,headline,age\nu1,Data engineer,31\nu2,Nurse,45\nu3,Founder,29\n"
ITEMS = "item_id,text,created_at,view_count\ni1,Spark tips,1700000000,10\ni2,Triage notes,1700000100,5\n"
INTERACTIONS = ("user_id,item_id,timestamp,engaged\nu1,i1,1700000500,true\nu2,i2,1700000600,false\n"
                "u2,i1,1700000700,1\n")


def _write(folder: Path, users=USERS, items=ITEMS, interactions=INTERACTIONS) -> list[Path]:
    paths = []
    for name, body in (("users.csv", users), ("items.csv", items), ("interactions.csv", interactions)):
        path = folder / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        paths.append(path)
    return paths


def test_clean_csv_loads_with_types(tmp_path):
    (tmp_path / "schema.json").write_text(SCHEMA.to_json())
    tables = load_tables(*_write(tmp_path), tmp_path / "schema.json")
    assert tables.schema == SCHEMA
    assert tables.users["user_id"].tolist() == ["u1", "u2", "u3"]
    assert tables.users["age"].dtype == np.float64 and tables.items["created_at"].dtype == np.int64
    assert tables.interactions["engaged"].tolist() == [True, False, True]
    assert tables.interactions["timestamp"].tolist() == [1700000500, 1700000600, 1700000700]
    assert tables.summary.rows_dropped == 0
    assert "1 users have no interactions" in str(tables.summary)  # u3: kept, noted


def test_any_dataset_in_the_shape_loads_without_code_changes(tmp_path):
    """Extra columns of every kind, Parquet + TSV.gz + CSV, ISO-8601 times, no schema given."""
    n = 80
    users = pd.DataFrame({"user_id": [f"u{k}" for k in range(n)], "country": ["FR", "DE", "US", "JP"] * (n // 4),
                          "salary": np.arange(n) * 1000.0,
                          "bio": [f"I work on project {k} with many words in it" for k in range(n)],
                          "signup_at": ["2024-01-02T03:04:05Z"] * n})
    items = pd.DataFrame({"item_id": [str(k) for k in range(n)], "text": [f"post {k}" for k in range(n)],
                          "like_count": np.arange(n)})
    inter = pd.DataFrame({"user_id": users["user_id"], "item_id": items["item_id"],
                          "timestamp": pd.date_range("2024-02-01", periods=n, freq="h", tz="UTC"),
                          "engaged": [True, False] * (n // 2)})
    users.to_parquet(tmp_path / "users.parquet")
    with gzip.open(tmp_path / "items.tsv.gz", "wt") as f:
        items.to_csv(f, sep="\t", index=False)
    inter.to_parquet(tmp_path / "interactions.parquet")
    tables = load_tables(tmp_path / "users.parquet", tmp_path / "items.tsv.gz", tmp_path / "interactions.parquet")
    kinds = {c.name: c.kind for c in tables.schema.users}
    assert kinds == {"user_id": "id", "country": "categorical", "salary": "numeric", "bio": "text",
                     "signup_at": "timestamp"}
    assert tables.schema.column("items", "like_count").min_value == 0
    assert tables.users["signup_at"].iloc[0] == 1704164645  # 2024-01-02T03:04:05Z
    assert tables.interactions["timestamp"].iloc[0] == 1706745600  # 2024-02-01T00:00Z
    assert tables.summary.rows_dropped == 0


def test_missing_required_column_names_file_and_column(tmp_path):
    paths = _write(tmp_path, interactions="user_id,timestamp,engaged\nu1,1700000500,true\n")
    with pytest.raises(LoadError, match=r"interactions\.csv: missing required column\(s\) \['item_id'\]"):
        load_tables(*paths, SCHEMA)


@pytest.mark.parametrize("table, body, message", [
    ("users", USERS.replace("45", "forty-five"), r"users\.csv row 2 \(line 3\), field 'age': 'forty-five' is not a number"),
    ("interactions", INTERACTIONS.replace("1700000600", "yesterday"),
     r"interactions\.csv row 2 \(line 3\), field 'timestamp': 'yesterday' is not a timestamp"),
    ("interactions", INTERACTIONS.replace("false", "maybe"),
     r"interactions\.csv row 2 \(line 3\), field 'engaged': 'maybe' is not a boolean"),
])
def test_wrong_types_are_errors_naming_file_row_and_field(tmp_path, table, body, message):
    with pytest.raises(LoadError, match=message):
        load_tables(*_write(tmp_path, **{table: body}), SCHEMA)


def test_non_utf8_bytes_error_names_line_and_field_or_are_replaced(tmp_path):
    bad = USERS.encode().replace(b"Nurse", b"Nur\xffse")
    paths = _write(tmp_path, users=bad)
    with pytest.raises(LoadError, match=r"users\.csv line 3 \(row 2\), field 'headline': bytes that are not UTF-8"):
        load_tables(*paths, SCHEMA)
    tables = load_tables(*paths, SCHEMA, encoding_errors="replace")
    assert tables.users["headline"].iloc[1] == "Nur\ufffdse"
    assert tables.summary["users"].changed == {"non-UTF-8 bytes replaced by U+FFFD": 1}


def test_non_utf8_bytes_in_a_parquet_binary_column(tmp_path):
    table = pa.table({"item_id": ["i1", "i2"], "text": pa.array([b"fine", b"bro\xc3ken\xff"], pa.binary())})
    pq.write_table(table, tmp_path / "items.parquet")
    users, _, inter = _write(tmp_path)
    with pytest.raises(LoadError, match=r"items\.parquet row 2, field 'text': .* not UTF-8"):
        load_tables(users, tmp_path / "items.parquet", inter)


def test_absurd_numbers_become_missing_or_drop_the_row_and_are_counted(tmp_path):
    items = ITEMS + "i3,Neg,1700000200,-4\ni4,Inf,1700000300,inf\ni5,NaN,1700000400,NaN\n"
    inter = INTERACTIONS + "u1,i2,inf,true\nu1,i3,-5,true\nu1,i4,,true\n"
    tables = load_tables(*_write(tmp_path, items=items, interactions=inter), SCHEMA)
    views = tables.items.set_index("item_id")["view_count"]
    assert views["i1"] == 10 and np.isnan(views[["i3", "i4", "i5"]]).all()
    changed = tables.summary["items"].changed
    assert changed["absurd 'view_count' (inf or below 0) set to missing"] == 2
    assert changed["missing or NaN 'view_count' (kept as missing)"] == 1
    dropped = tables.summary["interactions"].dropped
    assert dropped == {"absurd timestamp (outside 1970–2200)": 2, "missing timestamp": 1}
    assert "interactions.csv row 4 (line 5), field 'timestamp'" in tables.summary["interactions"].examples[
        "absurd timestamp (outside 1970–2200)"]


def test_duplicate_ids_identical_rows_dropped_conflicting_rows_rejected(tmp_path):
    tables = load_tables(*_write(tmp_path, users=USERS + "u2,Nurse,45\n"), SCHEMA)
    assert len(tables.users) == 3
    assert tables.summary["users"].dropped == {"duplicate row (identical to an earlier row)": 1}
    with pytest.raises(LoadError, match=r"duplicate user_id 'u2' at \S*users\.csv row 2 \(line 3\) and "
                                        r"\S*users\.csv row 4 \(line 5\) with different 'age' \(45\.0 vs 46\.0\)"):
        load_tables(*_write(tmp_path, users=USERS + "u2,Nurse,46\n"), SCHEMA)


def test_items_without_text_and_unknown_references_are_dropped_with_reasons(tmp_path):
    items = ITEMS + "i3,   ,1700000200,3\n"
    inter = INTERACTIONS + "u1,i3,1700000800,true\nghost,i1,1700000900,true\nu1,nope,1700001000,false\n,i1,1,true\n"
    tables = load_tables(*_write(tmp_path, items=items, interactions=inter), SCHEMA)
    assert "i3" not in set(tables.items["item_id"])
    assert tables.summary["items"].dropped == {"item with no text": 1}
    assert tables.summary["interactions"].dropped == {
        "item_id of a dropped item": 1, "unknown user_id": 1, "unknown item_id": 1, "missing user_id": 1}
    for report in tables.summary.tables.values():  # nothing disappears unaccounted for
        assert report.rows_read == report.rows_kept + report.rows_dropped
    text = str(tables.summary)
    assert "unknown user_id" in text and "interactions.csv row 5 (line 6), field 'user_id': 'ghost'" in text


def test_members_without_history_are_kept_but_not_evaluated(tmp_path):
    # u1 and u2 engage with five items each (one test target apiece); u3 never appears.
    items = "item_id,text\n" + "".join(f"i{i},post {i}\n" for i in range(5))
    inter = "user_id,item_id,timestamp,engaged\n" + "".join(
        f"{u},i{i},{1700000000 + 10 * i + k},true\n" for i in range(5) for k, u in enumerate(("u1", "u2")))
    tables = load_tables(*_write(tmp_path, items=items, interactions=inter), SCHEMA)
    assert "u3" in set(tables.users["user_id"])
    splits = temporal_split(tables, progress=False)
    assert {m.user_id for m in splits.test} == {"u1", "u2"}
    assert "u3" not in {m.user_id for m in splits.test + splits.validation}
    assert "u3" not in {e.user_id for e in splits.train}


def test_absent_engaged_column_means_every_row_is_an_engagement(tmp_path):
    inter = "user_id,item_id,timestamp\nu1,i1,1700000500\n"
    tables = load_tables(*_write(tmp_path, interactions=inter), SCHEMA)
    assert tables.interactions["engaged"].tolist() == [True]
    assert any("every interaction counts as an engagement" in n for n in tables.summary["interactions"].notes)


def test_columns_outside_an_explicit_schema_are_ignored_and_noted(tmp_path):
    tables = load_tables(*_write(tmp_path, users=USERS.replace("age\n", "age,secret\n").replace("31\n", "31,x\n")
                                 .replace("45\n", "45,y\n").replace("29\n", "29,z\n")), SCHEMA)
    assert "secret" not in tables.users.columns
    assert any("ignored: ['secret']" in n for n in tables.summary["users"].notes)


def test_schema_json_round_trip_and_checks():
    schema = infer_schema(pd.DataFrame({"user_id": ["a"], "joined_at": [1]}),
                          pd.DataFrame({"item_id": ["x"], "text": ["t"], "view_count": [3]}),
                          pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1]}))
    assert TableSchema.from_json(schema.to_json()) == schema
    assert schema.names("users", "timestamp") == ["joined_at"]
    assert "| items | `view_count` | numeric | no |  (min 0) |" in describe(schema)
    with pytest.raises(ValueError, match="unknown kind"):
        Column("x", "number")
    with pytest.raises(ValueError, match="must declare required column 'item_id'"):
        TableSchema(items=(Column("text", "text", required=True),))
