"""MovieLens-100k, read offline from the recbole package folder, through the generic adapter.

Users (age, gender, occupation) are members; movies (title, year, genres) are items whose
text is "<title> (<year>). Genres: <g1>, <g2>"; a rating >= 4 is an engagement, a lower
rating an impression without engagement. The movies' rating_count / mean_rating are
computed on the training period of the split only (see `add_item_stats`), so no number a
model sees contains a validation or test rating.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ff_jax.assets import movielens_100k_dir
from ff_jax.data.schema import Column, generic_schema
from ff_jax.data.splits import TRAIN, assign_periods
from ff_jax.data.tables import FeedTables, LoadSummary, TableReport, validate_tables

ENGAGED_MIN_RATING = 4

MOVIELENS_SCHEMA = generic_schema(
    users=[Column("age", "numeric", min_value=0, description="years"),
           Column("gender", "categorical"), Column("occupation", "categorical")],
    items=[Column("title", "text"), Column("year", "categorical", description="release year"),
           Column("genres", "categorical", description="comma-separated")],
    interactions=[Column("rating", "numeric", min_value=0, description="1-5 stars")],
)
ITEM_STAT_COLUMNS = (
    Column("rating_count", "numeric", min_value=0, description="ratings in the training period"),
    Column("mean_rating", "numeric", min_value=0, description="mean training-period rating"),
)

# "Usual Suspects, The" → "The Usual Suspects"; also "Postino, Il (The Postman)" style titles.
_TRAILING_ARTICLE = re.compile(r"^(.*?), (The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los|Las)( \(.*\))?$")


def readable_title(title: str) -> str:
    match = _TRAILING_ARTICLE.match(title)
    if not match:
        return title
    head, article, tail = match.groups()
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{head}{tail or ''}"


def _read_atomic(path: Path) -> pd.DataFrame:
    """recbole's atomic files: tab-separated, header cells are 'name:type'."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, quoting=3)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def movielens_frames(directory: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users, items and interactions of MovieLens-100k in the generic shape (not yet validated)."""
    directory = Path(directory) if directory else movielens_100k_dir()
    users = _read_atomic(directory / "ml-100k.user")[["user_id", "age", "gender", "occupation"]]
    movies = _read_atomic(directory / "ml-100k.item")
    ratings = _read_atomic(directory / "ml-100k.inter")

    title = movies["movie_title"].map(readable_title)
    # recbole marks an unknown year as 'unkonwn'; the adapter turns that into "missing".
    year = movies["release_year"].where(movies["release_year"].str.fullmatch(r"\d{4}"), "")
    genres = movies["class"].str.split().str.join(", ")
    text = title + np.where(year != "", " (" + year + ")", "") + ". Genres: " + genres
    items = pd.DataFrame({"item_id": movies["item_id"], "text": text, "title": title, "year": year,
                          "genres": genres})

    stars = pd.to_numeric(ratings["rating"])
    interactions = pd.DataFrame({"user_id": ratings["user_id"], "item_id": ratings["item_id"],
                                 "timestamp": ratings["timestamp"], "engaged": stars >= ENGAGED_MIN_RATING,
                                 "rating": stars})
    return users, items, interactions


def add_item_stats(tables: FeedTables, test_fraction: float = 0.2, validation_fraction: float = 0.1) -> FeedTables:
    """rating_count / mean_rating per item from training-period ratings only (leak-free).

    The training period is the one `temporal_split` with the same fractions uses; the
    fractions are recorded in tables.meta and temporal_split refuses any others.
    """
    period, _ = assign_periods(tables.interactions, test_fraction, validation_fraction)
    train = tables.interactions[period == TRAIN]
    stats = train.groupby("item_id")["rating"].agg(["count", "mean"])
    items = tables.items.copy()
    items["rating_count"] = items["item_id"].map(stats["count"]).fillna(0).astype(float)
    items["mean_rating"] = items["item_id"].map(stats["mean"]).astype(float)  # NaN = never rated in training
    tables.summary["items"].notes.append(
        f"rating_count / mean_rating from the {len(train):,} training-period ratings "
        f"(test_fraction={test_fraction}, validation_fraction={validation_fraction}); "
        f"{int((items['rating_count'] == 0).sum()):,} items unrated in training have no mean_rating")
    meta = dict(tables.meta, item_stats_split={"test_fraction": test_fraction,
                                               "validation_fraction": validation_fraction})
    return FeedTables(tables.name, tables.users, items, tables.interactions,
                      tables.schema.with_columns("items", *ITEM_STAT_COLUMNS), tables.summary, meta)


def load_movielens_100k(directory: str | Path | None = None, item_stats: bool = True,
                        test_fraction: float = 0.2, validation_fraction: float = 0.1) -> FeedTables:
    """MovieLens-100k as FeedTables (943 users, 1,682 movies, 100,000 ratings).

    item_stats: add rating_count / mean_rating computed on the training period of the
    temporal split with these fractions (pass the same ones to `temporal_split`).
    """
    directory = Path(directory) if directory else movielens_100k_dir()
    users, items, interactions = movielens_frames(directory)
    files = {"users": "ml-100k.user", "items": "ml-100k.item", "interactions": "ml-100k.inter"}
    summary = LoadSummary("movielens-100k")
    for table, frame in (("users", users), ("items", items), ("interactions", interactions)):
        summary.tables[table] = TableReport(table, str(directory / files[table]), rows_read=len(frame))
    tables = validate_tables(users, items, interactions, MOVIELENS_SCHEMA, "movielens-100k",
                             {t: str(directory / f) for t, f in files.items()}, summary)
    return add_item_stats(tables, test_fraction, validation_fraction) if item_stats else tables
