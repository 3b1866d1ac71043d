"""Your own tables: the rules for shapes outside the schema (no timestamps, ratings, encodings, ids
written as numbers), the folder's files, and the content key that decides when to prepare again."""

import shutil
from pathlib import Path

import gin
import pandas as pd
import pytest

from ff_jax.data.tables import LoadError, load_tables
from ff_jax.data.tables_builder import find_table_files, load_table_folder, tables_config
from ff_jax.data.tables_options import TablesOptions

HERE = Path(__file__).resolve().parent
USERS = "user_id,headline\nu1,Chef\nu2,Engineer\n"
ITEMS = "item_id,text\ni1,Pasta\ni2,Rust\ni3,Soup\n"


def write(folder: Path, interactions: str, users: str = USERS, items: str = ITEMS, encoding="utf-8") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("users", users), ("items", items), ("interactions", interactions)):
        (folder / f"{name}.csv").write_bytes(body.encode(encoding))
    return folder


def test_without_timestamps_file_order_is_time_order(tmp_path):
    folder = write(tmp_path, "user_id,item_id\nu2,i3\nu1,i2\nu1,i1\nu2,i1\n")
    tables = load_table_folder(folder)
    inter = tables.interactions
    assert inter["timestamp"].tolist() == [1, 2, 3, 4]  # row numbers
    assert inter[inter["user_id"] == "u1"]["item_id"].tolist() == ["i2", "i1"]  # as written
    assert any("no 'timestamp' column" in n for n in tables.summary["interactions"].notes)


def test_ratings_instead_of_engaged_with_a_threshold(tmp_path):
    folder = write(tmp_path, "user_id,item_id,timestamp,rating\nu1,i1,10,5\nu1,i2,20,3\nu2,i1,30,\nu2,i3,40,4\n")
    tables = load_table_folder(folder, TablesOptions(rating_threshold=4))
    inter = tables.interactions
    assert inter["item_id"].tolist() == ["i1", "i2", "i3"]
    assert inter["engaged"].tolist() == [True, False, True] and inter["rating"].tolist() == [5, 3, 4]
    report = tables.summary["interactions"]
    assert report.dropped == {"missing rating (needed by rating_threshold)": 1}
    assert "row 3 (line 4), field 'rating'" in report.examples["missing rating (needed by rating_threshold)"]
    # Without the option the ratings are unused, and the summary says so.
    plain = load_table_folder(folder)
    assert plain.interactions["engaged"].all()
    assert any("'rating' column is unused" in n for n in plain.summary["interactions"].notes)


def test_rating_threshold_errors_name_file_row_and_field(tmp_path):
    with pytest.raises(LoadError, match=r"interactions\.csv: has an 'engaged' column and "
                                        r"TablesOptions\.rating_threshold=4 is set"):
        load_table_folder(write(tmp_path / "a", "user_id,item_id,timestamp,engaged,rating\nu1,i1,1,true,5\n"),
                          TablesOptions(rating_threshold=4))
    with pytest.raises(LoadError, match=r"needs a 'stars' column"):
        load_table_folder(write(tmp_path / "b", "user_id,item_id,timestamp,rating\nu1,i1,1,5\n"),
                          TablesOptions(rating_threshold=4, rating_column="stars"))
    with pytest.raises(LoadError, match=r"interactions\.csv row 2 \(line 3\), field 'rating': 'great' is not a number"):
        load_table_folder(write(tmp_path / "c", "user_id,item_id,timestamp,rating\nu1,i1,1,5\nu1,i2,2,great\n"),
                          TablesOptions(rating_threshold=4))


def test_latin1_files_with_the_encoding_option(tmp_path):
    folder = write(tmp_path, "user_id,item_id,timestamp\nu1,i1,1\n", items="item_id,text\ni1,Crème brûlée\n",
                   encoding="latin-1")
    with pytest.raises(LoadError, match=r"items\.csv line 2 \(row 1\), field 'text': bytes that are not UTF-8"):
        load_table_folder(folder)
    tables = load_table_folder(folder, TablesOptions(encoding="latin-1"))
    assert tables.items["text"].tolist() == ["Crème brûlée"]
    with pytest.raises(ValueError, match="TablesOptions.encoding='klingon'"):
        TablesOptions(encoding="klingon")


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_header(tmp_path):
    folder = write(tmp_path, "\ufeffuser_id,item_id,timestamp\nu1,i1,1\n")
    assert load_table_folder(folder).interactions["user_id"].tolist() == ["u1"]


def test_ids_compare_as_text_unless_numeric_ids(tmp_path):
    """'007' in one file and 7 in another: text by default (with a note that says why they differ)."""
    users = pd.DataFrame({"user_id": [7, 8], "headline": ["Chef", "Engineer"]})
    folder = write(tmp_path, "user_id,item_id,timestamp\n007,i1,1\n8,i2,2\n")
    (folder / "users.csv").unlink()
    users.to_parquet(folder / "users.parquet")
    as_text = load_table_folder(folder)
    assert as_text.interactions["user_id"].tolist() == ["8"]
    assert as_text.summary["interactions"].dropped == {"unknown user_id": 1}
    assert any("matches as a number (first: '007')" in n for n in as_text.summary["interactions"].notes)
    as_numbers = load_table_folder(folder, TablesOptions(numeric_ids=True))
    assert as_numbers.interactions["user_id"].tolist() == ["7", "8"]


def test_folder_files_are_found_or_named(tmp_path):
    folder = write(tmp_path / "f", "user_id,item_id,timestamp\nu1,i1,1\n")
    assert set(find_table_files(folder)) == {"users", "items", "interactions"}
    (folder / "schema.json").write_text("{}")
    assert find_table_files(folder)["schema"].name == "schema.json"
    shutil.copy(folder / "users.csv", folder / "users.tsv")
    with pytest.raises(LoadError, match="users.csv and users.tsv both hold users; keep one"):
        find_table_files(folder)
    (folder / "users.tsv").unlink()
    (folder / "items.csv").unlink()
    with pytest.raises(LoadError, match="no items file"):
        find_table_files(folder)
    with pytest.raises(LoadError, match="no such folder"):
        find_table_files(tmp_path / "nope")


def test_the_content_key_follows_the_files_and_options_not_the_folder(tmp_path):
    a = write(tmp_path / "mine", "user_id,item_id,timestamp\nu1,i1,1\n")
    b = write(tmp_path / "copy" / "mine", "user_id,item_id,timestamp\nu1,i1,1\n")
    key = tables_config(a).name
    assert key.startswith("mine_") and tables_config(b).name == key  # same bytes, same key
    assert tables_config(a, TablesOptions(numeric_ids=True)).name != key
    assert tables_config(a, numbers="raw").name != key
    (a / "items.csv").write_text(ITEMS.replace("Soup", "Stew"))
    assert tables_config(a).name != key
    (b / "schema.json").write_text("{}")
    assert tables_config(b).name != key


def test_options_come_from_gin():
    from ff_jax.data.feed_data import FeedData  # noqa: F401  (FeedData binds TablesOptions)

    gin.parse_config(["TablesOptions.rating_threshold = 4", "TablesOptions.encoding = 'latin-1'"])
    assert TablesOptions() == TablesOptions(encoding="latin-1", rating_threshold=4)


def test_the_committed_datasets_load_by_their_rules():
    csv = load_table_folder(HERE / "tables_csv", TablesOptions(encoding="latin-1"))
    assert "Zürich" in csv.users["headline"].iloc[0] and csv.summary.rows_dropped == 0
    parquet = load_table_folder(HERE / "tables_parquet", TablesOptions(rating_threshold=4, numeric_ids=True))
    assert parquet.summary.rows_dropped == 0 and 0 < parquet.interactions["engaged"].mean() < 1
    assert set(parquet.interactions["user_id"]) <= set(parquet.users["user_id"])
    with pytest.raises(LoadError, match="no usable interactions row: all 417 were dropped") as err:
        load_table_folder(HERE / "tables_parquet", TablesOptions(rating_threshold=4))
    assert "matches as a number" in str(err.value)  # "007" is not 7 as text
