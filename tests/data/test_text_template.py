"""Item text from the columns a file has (TablesOptions.item_text), and Arrow columns that arrive in
chunks, on files written here."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ff_jax.data.prompts import PromptRenderer, PromptTemplate
from ff_jax.data.tables import LoadError
from ff_jax.data.tables_builder import load_table_folder
from ff_jax.data.tables_checks import all_unique, factorize, index_in
from ff_jax.data.tables_options import TablesOptions


def books(folder, authors=("Le Guin", "", "Banks")):
    folder.mkdir(exist_ok=True)
    pd.DataFrame({"user_id": ["u1", "u2"]}).to_csv(folder / "users.csv", index=False)
    pd.DataFrame({"item_id": ["b1", "b2", "b3"], "title": ["The Dispossessed", "Solaris", "Excession"],
                  "author": list(authors), "publisher": ["Harper", "Walker", "Orbit"]}).to_csv(folder / "items.csv",
                                                                                               index=False)
    pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["b1", "b2", "b2", "b3"],
                  "rating": [8, 0, 9, 7]}).to_csv(folder / "interactions.csv", index=False)
    return folder


def test_a_template_makes_the_text_and_the_other_columns_stay_fields(tmp_path):
    tables = load_table_folder(books(tmp_path / "b"), TablesOptions(rating_threshold=6, item_text="{title} by {author}"))
    assert tables.items["text"].tolist() == ["The Dispossessed by Le Guin", "Solaris by", "Excession by Banks"]
    assert "title" not in tables.items and "author" not in tables.items  # consumed by the text
    prompt = PromptRenderer(tables.schema, PromptTemplate()).item_prompts(tables.items.iloc[:1])[0]
    assert prompt == "<item><publisher>Harper</publisher><text>The Dispossessed by Le Guin</text></item>"
    notes = "\n".join(tables.summary["items"].notes)
    assert "text = '{title} by {author}'" in notes and "1 rows have no 'author'" in notes


@pytest.mark.parametrize("template,message", [
    ("{titel} by {author}", r"names column\(s\) \['titel'\] that the file lacks \(it has \['item_id', 'title'"),
    ("{title:>9}", "without format specs"),
    ("{title", "expected '}'"),
    ("no columns", "names no column"),
])
def test_a_bad_template_is_one_error_naming_what_is_wrong(tmp_path, template, message):
    with pytest.raises(LoadError, match=message):
        load_table_folder(books(tmp_path / "b"), TablesOptions(rating_threshold=6, item_text=template))


def test_a_column_empty_in_every_row_is_refused(tmp_path):
    with pytest.raises(LoadError, match=r"\['author'\] named by TablesOptions.item_text are empty in every row"):
        load_table_folder(books(tmp_path / "b", authors=("", "", "")),
                          TablesOptions(rating_threshold=6, item_text="{title} by {author}"))


def test_no_text_and_no_template_says_how_to_write_one(tmp_path):
    with pytest.raises(LoadError, match=r"missing required column\(s\) \['text'\].*TablesOptions.item_text='\{title\}"):
        load_table_folder(books(tmp_path / "b"), TablesOptions(rating_threshold=6))


def test_chunked_arrow_columns_encode_like_numpy():
    """A large Arrow-backed column converts to a ChunkedArray; forced here with chunks of 2."""
    values = ["a", "b", "a", "c", "b", "d", "a"]
    chunked = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([values[i:i + 2] for i in range(0, 7, 2)])))
    assert isinstance(pa.array(chunked.array, from_pandas=True), pa.ChunkedArray)
    codes = factorize(chunked)
    assert [values[codes.tolist().index(c)] for c in codes] == values  # equal codes <=> equal strings
    assert len(set(codes.tolist())) == len(set(values))
    universe = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array([["d", "a"], ["c"]])))
    assert index_in(chunked, universe).tolist() == [["d", "a", "c"].index(v) if v in "dac" else -1 for v in values]
    assert not all_unique(chunked)


def test_a_parquet_file_read_in_row_groups_loads(tmp_path):
    folder = books(tmp_path / "b")
    interactions = pd.read_csv(folder / "interactions.csv")
    (folder / "interactions.csv").unlink()
    many = pd.concat([interactions] * 50, ignore_index=True)
    pq.write_table(pa.Table.from_pandas(many.astype({"user_id": str, "item_id": str})),
                   folder / "interactions.parquet", row_group_size=7)
    tables = load_table_folder(folder, TablesOptions(rating_threshold=6, item_text="{title} by {author}"))
    # no timestamps: row order is time order, so the repeats are 200 distinct interactions, in file order
    assert tables.interactions["item_id"].tolist() == many["item_id"].tolist()
