"""MovieLens-100k through the generic adapter: counts, labels, text, leak-free item statistics."""

import shutil

import numpy as np
import pandas as pd
import pytest

from ff_jax.assets import movielens_100k_dir
from ff_jax.data.movielens import load_movielens_100k, readable_title
from ff_jax.data.splits import TEST, VALIDATION, temporal_split


@pytest.fixture(scope="module")
def movielens():
    return load_movielens_100k()


@pytest.fixture(scope="module")
def raw_ratings():
    # An independent read of the shipped file (numpy, not the adapter).
    data = np.loadtxt(movielens_100k_dir() / "ml-100k.inter", skiprows=1, dtype=np.int64)
    return pd.DataFrame(data, columns=["user_id", "item_id", "rating", "timestamp"])


def test_sizes_and_labels_match_the_shipped_files(movielens, raw_ratings):
    assert (len(movielens.users), len(movielens.items), len(movielens.interactions)) == (943, 1682, 100_000)
    assert movielens.summary.rows_dropped == 0
    assert int(movielens.interactions["engaged"].sum()) == int((raw_ratings["rating"] >= 4).sum())
    inter = movielens.interactions
    assert (inter["engaged"] == (inter["rating"] >= 4)).all()
    # Same multiset of (user, item, rating, time) rows as the raw file.
    ours = inter.assign(user_id=inter.user_id.astype(int), item_id=inter.item_id.astype(int),
                        rating=inter.rating.astype(int))[["user_id", "item_id", "rating", "timestamp"]]
    key = ["user_id", "item_id"]
    pd.testing.assert_frame_equal(ours.sort_values(key).reset_index(drop=True),
                                  raw_ratings.sort_values(key).reset_index(drop=True))


def test_interactions_are_time_sorted_keeping_file_order_for_ties(movielens, raw_ratings):
    ts = movielens.interactions["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all()
    expected = raw_ratings.sort_values("timestamp", kind="stable")
    assert movielens.interactions["item_id"].astype(int).tolist() == expected["item_id"].tolist()


def test_item_text_is_title_year_genres(movielens):
    items = movielens.items.set_index("item_id")
    assert items.at["1", "text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert items.at["12", "text"].startswith("The Usual Suspects (1995).")
    assert items.at["267", "year"] == ""  # recbole's 'unkonwn' year became missing
    assert "(" not in items.at["267", "text"]
    assert (items["text"].str.len() > 0).all()


def test_readable_title_moves_trailing_articles():
    assert readable_title("Postino, Il (1994)") == "Il Postino (1994)"
    assert readable_title("Usual Suspects, The") == "The Usual Suspects"
    assert readable_title("Seven (Se7en)") == "Seven (Se7en)"


def test_profile_columns_and_schema_kinds(movielens):
    assert movielens.users.loc[movielens.users.user_id == "1", ["age", "gender", "occupation"]].values.tolist() \
        == [[24.0, "M", "technician"]]
    assert movielens.schema.names("items", "numeric") == ["rating_count", "mean_rating"]
    assert movielens.schema.names("users", "categorical") == ["gender", "occupation"]


def test_item_stats_use_training_ratings_only(movielens, tmp_path):
    """Changing validation/test ratings (keeping which are >= 4) must not move any statistic;
    changing a training rating must."""
    splits = temporal_split(movielens, progress=False)
    inter = movielens.interactions
    later = splits.period >= VALIDATION
    assert later.sum() > 10_000 and (splits.period == TEST).any()

    def perturbed_copy(mask: np.ndarray, folder: str):
        target = tmp_path / folder
        target.mkdir()
        for name in ("ml-100k.user", "ml-100k.item"):
            shutil.copy(movielens_100k_dir() / name, target / name)
        rating = inter["rating"].astype(int).to_numpy().copy()
        swap = {1: 3, 2: 1, 3: 2, 4: 5, 5: 4}  # keeps rating >= 4 exactly where it was
        rating[mask] = [swap[r] for r in rating[mask]]
        frame = pd.DataFrame({"user_id:token": inter.user_id, "item_id:token": inter.item_id,
                              "rating:float": rating, "timestamp:float": inter.timestamp})
        frame.to_csv(target / "ml-100k.inter", sep="\t", index=False)
        return load_movielens_100k(target)

    columns = ["item_id", "rating_count", "mean_rating"]
    same = perturbed_copy(later, "later")
    pd.testing.assert_frame_equal(same.items[columns], movielens.items[columns])
    first_train = np.flatnonzero(~later)[:500]
    one_train = np.zeros(len(inter), bool)
    one_train[first_train] = True
    moved = perturbed_copy(one_train, "train")
    assert not np.allclose(moved.items["mean_rating"].fillna(0), movielens.items["mean_rating"].fillna(0))


def test_split_with_other_fractions_is_refused(movielens):
    with pytest.raises(ValueError, match="leak"):
        temporal_split(movielens, test_fraction=0.3, progress=False)


@pytest.mark.slow
def test_titles_config_is_the_base_with_untagged_history_items(tmp_path):
    """"100k_titles" differs from "100k" only inside member histories: each history item is its
    <text> alone, the percentile tags dropped; ids, targets, item prompts and order are the same."""
    import re

    from ff_jax.data import prepared

    for config in ("100k", "100k_titles"):
        prepared.build("movielens_feed", config, tmp_path)
    base = prepared.open_prepared(tmp_path, "movielens_feed", "100k")[0]["train"]
    titles = prepared.open_prepared(tmp_path, "movielens_feed", "100k_titles")[0]["train"]
    assert len(base) == len(titles)
    tags = re.compile(r"<(\w+_percentile)>\d+</\1>")
    shortened = 0
    for i in range(0, len(base), 97):
        a, b = base[i], titles[i]
        for key in ("user_id", "positive_id", "positive_prompt", "negative_prompts", "member_profile"):
            assert a[key] == b[key], (i, key)
        assert [tags.sub("", piece) for piece in a["member_history"]] == list(b["member_history"])
        shortened += sum(len(x) > len(y) for x, y in zip(a["member_history"], b["member_history"]))
    assert shortened > 0  # the base's history items do carry tags
