"""Percentile quantiser: buckets against numpy.percentile, tags, modes, JSON round trip."""

import numpy as np
import pandas as pd
import pytest

from ff_jax.data.quantizer import Quantizer, default_tag, fit_on_training


@pytest.fixture(scope="module")
def heavy_tailed():
    rng = np.random.default_rng(0)
    train = np.floor(rng.pareto(1.2, 5000) * 100)  # counts with many ties at 0..few
    return pd.DataFrame({"view_count": train, "score": rng.normal(size=5000)})


def test_buckets_match_numpy_percentiles(heavy_tailed):
    q = Quantizer.fit(heavy_tailed)
    rng = np.random.default_rng(1)
    for column in ("view_count", "score"):
        train = heavy_tailed[column].to_numpy()
        probes = np.concatenate([rng.choice(train, 500), rng.uniform(train.min() - 1, train.max() + 1, 500),
                                 np.percentile(train, [1, 50, 99])])
        edges = np.stack([np.percentile(train, p) for p in range(1, 100)])
        expected = 1 + (probes[:, None] >= edges[None, :]).sum(1)
        np.testing.assert_array_equal(q.bucket(column, probes), expected)


def test_continuous_training_values_fill_buckets_evenly(heavy_tailed):
    q = Quantizer.fit(heavy_tailed, ["score"])
    counts = np.bincount(q.bucket("score", heavy_tailed["score"]), minlength=101)[1:]
    assert counts.min() >= 35 and counts.max() <= 65   # 50 expected per bucket
    assert q.bucket("score", [-1e9, 1e9]).tolist() == [1, 100]


def test_renders_tags_in_every_mode(heavy_tailed):
    q = Quantizer.fit(heavy_tailed, ["view_count"])
    median = float(np.percentile(heavy_tailed["view_count"], 50.5))
    bucket = int(q.bucket("view_count", [median])[0])
    assert default_tag("view_count") == "view_percentile"
    assert q.render_value("view_count", median) == f"<view_percentile>{bucket}</view_percentile>"
    assert q.render_value("view_count", np.nan) == "" and q.render_value("view_count", np.inf) == ""
    raw = q.with_mode("raw")
    assert raw.render("view_count", pd.Series([1234.0, 3.87532, None])).tolist() == [
        "<view_count>1234</view_count>", "<view_count>3.875</view_count>", ""]
    assert q.with_mode("absent").render("view_count", pd.Series([1.0, 2.0])).tolist() == ["", ""]
    assert q.markers() == ["<view_percentile>", "</view_percentile>"]
    assert raw.markers() == ["<view_count>", "</view_count>"] and q.with_mode("absent").markers() == []


def test_tag_names_are_configurable_and_checked(heavy_tailed):
    q = Quantizer.fit(heavy_tailed, ["view_count"], tags={"view_count": "views_pct"})
    assert q.render_value("view_count", 5).startswith("<views_pct>")
    with pytest.raises(ValueError, match="plain identifier"):
        Quantizer.fit(heavy_tailed, ["view_count"], tags={"view_count": "bad tag>"})
    with pytest.raises(KeyError, match="not fitted on column 'likes'"):
        q.bucket("likes", [1])
    with pytest.raises(ValueError, match="mode"):
        q.with_mode("log")


def test_json_round_trip_renders_identically(heavy_tailed, tmp_path):
    q = Quantizer.fit(heavy_tailed, tags={"score": "score_pct"}, mode="raw")
    q.save(tmp_path / "quantizer.json")
    back = Quantizer.load(tmp_path / "quantizer.json")
    assert back == q
    probe = pd.Series(np.linspace(-3, 3000, 97))
    for mode in ("quantile", "raw"):
        for column in ("view_count", "score"):
            assert back.with_mode(mode).render(column, probe).tolist() == q.with_mode(mode).render(column, probe).tolist()
    with pytest.raises(ValueError, match="not an ff_jax quantiser"):
        Quantizer.from_json('{"format": "other"}')


def test_fit_ignores_non_finite_values():
    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan, np.inf, 3.0]})
    q = Quantizer.fit(frame)
    assert q.features["x"].n_fit == 3
    np.testing.assert_allclose(q.features["x"].edges, np.percentile([1.0, 2.0, 3.0], range(1, 100)))


def test_fit_on_training_uses_training_items_only():
    from ff_jax.data.splits import temporal_split
    from ff_jax.data.tables import validate_tables

    users = pd.DataFrame({"user_id": ["a"], "age": [30.0]})
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(10)], "text": ["t"] * 10,
                          "view_count": [float(k) for k in range(10)]})
    inter = pd.DataFrame({"user_id": "a", "item_id": [f"i{k}" for k in range(10)],
                          "timestamp": range(10), "engaged": True})
    tables = validate_tables(users, items, inter)
    splits = temporal_split(tables, test_fraction=0.2, validation_fraction=0.1, progress=False)
    q = fit_on_training(tables, splits)
    assert q.features["view_count"].n_fit == 7           # items i0..i6 are the training period
    assert q.features["view_count"].edges[-1] < 7
    assert set(q.features) == {"age", "view_count"}


def test_quantile_texts_equal_formatting_each_value(heavy_tailed):
    """render looks the 100 bucket texts up; formatting every value's bucket gives the same texts."""
    q = Quantizer.fit(heavy_tailed)
    rng = np.random.default_rng(2)
    values = pd.Series(np.r_[rng.normal(size=2000) * 3, np.nan, np.inf, -np.inf, -50, 50], index=rng.permutation(2005))
    buckets = q.bucket("score", values)
    expected = ["" if b == 0 else f"<score_percentile>{b}</score_percentile>" for b in buckets.tolist()]
    rendered = q.render("score", values)
    assert rendered.tolist() == expected and rendered.index.equals(values.index)
    assert set(buckets.tolist()) >= {0, 1, 100}
