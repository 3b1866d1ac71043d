"""Issue 14, the data rows, with real CSV files written here and read the way `ff-jax train
--gin.DATASET=tables` reads them (load_table_folder, and FeedData's prepared `tables` dataset).

Row 7: a missing-value token ('nan', 'NaN', 'NA', 'N/A', 'null', 'None', '') in a numeric column
whose kind is inferred. The column stays numeric, the cell is missing, the summary counts it, and
the other members' values still become percentile tags in their prompts.
Row 8: an interactions file with a header only, interactions that are all engaged=false, and a
one-row dataset. Each is an error naming the file and what is missing, raised before anything
is split or prepared; the user's files are left as they were.
"""

import numpy as np
import pytest

from ff_jax import cli
from ff_jax.data.schema import MISSING_VALUES
from ff_jax.data.splits import temporal_split
from ff_jax.data.tables import NotEnoughData, load_tables
from ff_jax.data.tables_builder import load_table_folder
from ff_jax.data.feed_data import FeedData

TOKENS = ["nan", "NaN", "NA", "N/A", "null", "None", "", " NULL ", "-nan"]
AGES = [31, 45, 29, 52, 38, 27, 61, 33]


def write_folder(folder, users, items, interactions):
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in (("users.csv", users), ("items.csv", items), ("interactions.csv", interactions)):
        (folder / name).write_text(body)
    return folder


def feed(n_items=12):
    """Items, and interactions where every member engages with 10 items (test and validation
    targets for each) at distinct times."""
    items = "item_id,text\n" + "".join(f"i{i},post number {i} about topic {i % 3}\n" for i in range(n_items))
    rows = [f"m{u},i{(u + k) % n_items},{1_700_000_000 + 100 * k + u},true\n"
            for k in range(10) for u in range(len(AGES))]
    return items, "user_id,item_id,timestamp,engaged\n" + "".join(rows)


def test_row7_missing_value_tokens_leave_an_inferred_column_numeric(tmp_path):
    """One numeric column per token, each with that token in one row: every column is numeric."""
    assert {t.strip().lower() for t in TOKENS} <= MISSING_VALUES
    header = "user_id," + ",".join(f"score{j}" for j in range(len(TOKENS)))
    lines = [f"m{u}," + ",".join(token if u == j % len(AGES) else str(AGES[u] + j)
                                for j, token in enumerate(TOKENS)) for u in range(len(AGES))]
    items, interactions = feed()
    folder = write_folder(tmp_path / "mine", header + "\n" + "\n".join(lines) + "\n", items, interactions)
    tables = load_table_folder(folder)
    for j, token in enumerate(TOKENS):
        column = f"score{j}"
        assert tables.schema.column("users", column).kind == "numeric", token
        values = tables.users.set_index("user_id")[column]
        assert values.dtype == np.float64
        missing_row = f"m{j % len(AGES)}"
        assert np.isnan(values[missing_row])
        # nothing else lost: every other value as written
        others = {f"m{u}": float(AGES[u] + j) for u in range(len(AGES)) if f"m{u}" != missing_row}
        assert values.drop(missing_row).to_dict() == others
        assert tables.summary["users"].changed[f"missing or NaN '{column}' (kept as missing)"] == 1, token
    report = str(tables.summary)
    assert "changed 1 × missing or NaN 'score0' (kept as missing)" in report
    assert f"users.csv row 1 (line 2), field 'score0': 'nan'" in report
    assert tables.summary["users"].rows_kept == tables.summary["users"].rows_read == len(AGES)


def test_row7_a_nan_age_is_missing_and_the_other_ages_are_quantised_in_prompts(tmp_path):
    users = "user_id,age\n" + "".join(f"m{u},{'nan' if u == 2 else age}\n" for u, age in enumerate(AGES))
    items, interactions = feed()
    folder = write_folder(tmp_path / "mine", users, items, interactions)
    data = FeedData(data_dir=str(tmp_path / "tfds"), dataset="tables", tables=str(folder))
    sources, _, _ = data.open_dataset("tables")
    profiles = {}
    for split in ("train", "test"):
        for i in range(len(sources[split])):
            record = sources[split][i]
            profiles[record["user_id"]] = " ".join(record["member_profile"])
    assert set(profiles) == {f"m{u}" for u in range(len(AGES))}
    # The other ages' buckets, computed here as the quantiser documents them: 1 + how many of the
    # 1st..99th percentiles of the known ages (numpy, linear) a value reaches.
    known = [age for u, age in enumerate(AGES) if u != 2]
    edges = np.percentile(known, np.arange(1, 100))
    for user, profile in profiles.items():
        if user == "m2":
            assert "age" not in profile and "nan" not in profile, profile
        else:
            bucket = 1 + int(np.searchsorted(edges, AGES[int(user[1:])], side="right"))
            assert f"<age_percentile>{bucket}</age_percentile>" in profile, profile


@pytest.fixture
def make_folder(tmp_path):
    """Writes a folder with `interactions` (and `items`, default: feed()'s) and returns (folder,
    its files' bytes)."""

    def make(name, interactions, items=None):
        users = "user_id,age\n" + "".join(f"m{u},{age}\n" for u, age in enumerate(AGES))
        folder = write_folder(tmp_path / name, users, items or feed()[0], interactions)
        return folder, {p.name: p.read_bytes() for p in folder.iterdir()}

    return make


HEADER = "user_id,item_id,timestamp,engaged\n"
NO_TEXT = "item_id,text\n" + "".join(f"i{i}, \n" for i in range(12))  # every item dropped: no text
# case -> (interactions, items (None: feed()'s), the error)
CASES = {
    "items_without_text": (feed()[1], NO_TEXT,
                           r"items.csv: no usable items row: all 12 were dropped; what the loader dropped and why:\n"),
    "header_only": (HEADER, None,
                    r"interactions.csv: no rows \(a header only, or an empty table\); the interactions table needs "
                    r"at least one"),
    "never_engaged": (HEADER + "".join(f"m{u},i{u},{1_700_000_000 + u},false\n" for u in range(5)), None,
                      r"interactions.csv: no engaged interaction among its 5 usable rows \(every one is "
                      r"engaged=false\)"),
    "one_row": (HEADER + "m0,i0,1700000000,true\n", None,
                r"interactions.csv: no test members: a member needs at least 5 engaged items for one test target "
                r"at test_fraction=0.2, and the most any member has is 1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_row8_no_usable_rows_no_positive_or_no_test_member_is_an_error_naming_the_file(
        make_folder, tmp_path, case):
    interactions, items, message = CASES[case]
    folder, before = make_folder(case, interactions, items)
    source = folder / ("items.csv" if items else "interactions.csv")
    files = [folder / "users.csv", folder / "items.csv", folder / "interactions.csv"]
    # The library: load_tables (rows and positives), then temporal_split (its test members).
    with pytest.raises(NotEnoughData, match=message) as err:
        temporal_split(load_tables(*files), progress=False)
    assert str(err.value).startswith(f"{source}: ")
    # The prepared dataset that training reads: the same error, nothing written under data_dir.
    data_dir = tmp_path / f"tfds_{case}"
    with pytest.raises(NotEnoughData, match=message):
        FeedData(data_dir=str(data_dir), dataset="tables", tables=str(folder)).open_dataset("tables")
    assert not data_dir.exists()  # no folder at all: not an empty <name>_<hash>/, not a scratch one
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the user's files untouched


@pytest.mark.slow
def test_row8_ff_jax_train_says_not_enough_data_and_trains_nothing(make_folder, tmp_path, capsys):
    folder, before = make_folder("one_row", CASES["one_row"][0])  # the one-row dataset
    workdir = tmp_path / "run"
    code = cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", "--gin.DATASET=tables",
                     f"--gin.TABLES={folder}", f"--gin.DATA_DIR={tmp_path / 'tfds'}", f"--workdir={workdir}",
                     "--gin.STEPS=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"ff-jax train: not enough data: {folder / 'interactions.csv'}: no test members" in err, err
    assert not (workdir / "checkpoints").exists()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_blank_ratings_are_counted_once_as_dropped(tmp_path):
    """Rows without a rating under rating_threshold are dropped, and the summary says only that (they
    were counted as "kept as missing" too)."""
    items, _ = feed()
    rows = "".join(f"m{u},i{(u + k) % 12},{1_700_000_000 + 100 * k + u},{'' if k == 3 else 5}\n"
                   for k in range(10) for u in range(len(AGES)))
    folder = write_folder(tmp_path / "blank", "user_id\n" + "".join(f"m{u}\n" for u in range(len(AGES))), items,
                          "user_id,item_id,timestamp,rating\n" + rows)
    from ff_jax.data.tables_options import TablesOptions

    report = load_table_folder(folder, TablesOptions(rating_threshold=4)).summary["interactions"]
    assert report.dropped == {"missing rating (needed by rating_threshold)": len(AGES)}
    assert not any("rating" in reason for reason in report.changed)
    assert report.rows_read - report.rows_kept == len(AGES)


@pytest.mark.slow
def test_a_preparation_that_cannot_write_is_one_line_and_leaves_nothing(tmp_path):
    """Files limited to 8 KB (EFBIG, as a full disk gives ENOSPC): `ff-jax train` stops with one line
    naming the dataset, and DATA_DIR holds nothing; a folder abandoned by a killed preparation is
    cleared by the next one."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    from ff_jax.data.tables_builder import tables_config
    from ff_jax.data.tables_options import TablesOptions

    data_dir = tmp_path / "data"
    folder = Path(__file__).resolve().parent / "tables_books"
    name = tables_config(folder, TablesOptions(item_text="{title} by {author}", rating_threshold=6)).name
    abandoned = data_dir / "tables" / name / ".2.0.0.incomplete-999999999"  # no such process
    abandoned.mkdir(parents=True)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    done = subprocess.run([sys.executable, "-m", "ff_jax.cli", "train", "--gin_file=experiments/tiny_smoke.gin",
                           "--gin.DATASET=tables", f"--gin.TABLES={folder}", f"--gin.DATA_DIR={data_dir}",
                           "--gin.TablesOptions.item_text='{title} by {author}'",
                           "--gin.TablesOptions.rating_threshold=6", f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, preexec_fn=limit, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("ff-jax train:")]
    assert line.startswith("ff-jax train: data not prepared: ") and "File too large" in line
    assert "nothing of it was kept" in line and f"{data_dir}/tables/tables_books_" in line
    assert [p for p in data_dir.rglob("*") if p.is_file()] == []
    assert not abandoned.exists()
