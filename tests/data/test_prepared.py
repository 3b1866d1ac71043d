"""Round trip of a prepared dataset: prepare a tiny dataset + corpus into tmp_path (ff_jax.data.store),
read it back as random-access sources, check the records against the splits, feed the pipeline."""

import hashlib

import numpy as np
import pandas as pd
import pytest

from ff_jax.data import prepared as tb
from ff_jax.data.quantizer import Quantizer
from ff_jax.data.pipeline import BatchConfig, embedding_batches, item_key, train_batches
from ff_jax.data.schema import Column, generic_schema
from ff_jax.data.splits import temporal_split
from ff_jax.data.tables import validate_tables
from ff_jax.model.tokenizer import byte_tokenizer

SCHEMA = generic_schema(users=[Column("headline", "text"), Column("industry", "categorical")],
                        items=[Column("post_type", "categorical"), Column("like_count", "numeric", min_value=0)])


def tiny_tables():
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"user_id": [f"m{i}" for i in range(24)],
                          "headline": [f"Engineer number {i}" for i in range(24)],
                          "industry": rng.choice(["Software", "Finance", "Health"], 24)})
    items = pd.DataFrame({"item_id": [f"p{i}" for i in range(60)],
                          "text": [f"Post {i} about " + ("graphs" if i % 2 else "hiring") for i in range(60)],
                          "created_at": 1_600_000_000 + np.arange(60) * 3600,
                          "post_type": rng.choice(["article", "video"], 60),
                          "like_count": rng.pareto(1.5, 60).round() * 10})
    n = 700
    interactions = pd.DataFrame({"user_id": rng.choice(users["user_id"], n), "item_id": rng.choice(items["item_id"], n),
                                 "timestamp": 1_600_000_000 + np.sort(rng.integers(0, 10**7, n)),
                                 "engaged": rng.random(n) < 0.6})
    return validate_tables(users, items, interactions, SCHEMA, "tiny")


class TinyFeed(tb._FeedBuilder):
    """A tiny synthetic feed for the round-trip test."""

    name = "tiny_feed"
    BUILDER_CONFIGS = [tb.FeedConfig(name="base")]

    def _load_tables(self):
        return tiny_tables()


class TinyFeedCorpus(TinyFeed):
    name = "tiny_feed_corpus"


def build(cls, data_dir):
    builder = cls(config="base", data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    build(TinyFeed, data_dir)
    build(TinyFeedCorpus, data_dir)
    return data_dir


def text(value):
    return value.decode() if isinstance(value, bytes) else value


def test_round_trip_records_match_the_splits(prepared):
    sources, fmt, metadata = tb.open_prepared(prepared, "tiny_feed", "base")
    splits = temporal_split(tiny_tables(), progress=False)
    assert {k: len(v) for k, v in sources.items()} == {
        "train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    assert {"<headline>", "<like_percentile>"} <= set(fmt.markers) and metadata["numbers"] == "quantile"
    quantizer = Quantizer.from_dict(metadata["quantizer"])  # the one fitted on the training split

    items = tiny_tables().items.set_index("item_id")
    by_key = {(e.user_id, e.positive, e.timestamp): e for e in splits.train}
    for record in sources["train"]:
        example = by_key[(text(record["user_id"]), text(record["positive_id"]), int(record["timestamp"]))]
        prompt = text(record["positive_prompt"])
        assert prompt.endswith(f"<text>{items.loc[example.positive, 'text']}</text></item>")
        assert quantizer.render_value("like_count", items.loc[example.positive, "like_count"]) in prompt
        assert [text(i) for i in record["negative_ids"]] == example.hard_negatives
        assert text(record["cohort"]) == example.cohort
        # History: the engaged items before the positive, newest first, one piece each.
        engaged = [i for i, e in zip(example.history, example.history_engaged) if e][::-1]
        history = [text(h) for h in record["member_history"]]
        assert len(history) == min(len(engaged), 50)
        for piece, item_id in zip(history, engaged):
            assert f"<text>{items.loc[item_id, 'text']}</text>" in piece
    evals = {text(r["user_id"]): r for r in sources["test"]}
    for member in splits.test:
        record = evals[member.user_id]
        assert [text(t) for t in record["target_ids"]] == member.targets
        assert [text(t) for t in record["engaged_history_ids"]] == member.engaged_history


def test_corpus_holds_every_item_once(prepared):
    sources, _, _ = tb.open_prepared(prepared, "tiny_feed_corpus", "base")
    ids = sorted(text(r["item_id"]) for r in sources["corpus"])
    assert ids == sorted(f"p{i}" for i in range(60))


def test_corpus_records_carry_creation_times_and_authors(prepared):
    """created_at comes from the items table (the tiny feed has no author column: "" = unknown)."""
    sources, _, _ = tb.open_prepared(prepared, "tiny_feed_corpus", "base")
    got = {text(r["item_id"]): (int(r["created_at"]), text(r["author"])) for r in sources["corpus"]}
    assert got == {f"p{i}": (1_600_000_000 + i * 3600, "") for i in range(60)}
    assert (prepared / "tiny_feed" / "base" / tb.VERSION).is_dir()  # one preparation for both names
    assert tb.is_prepared(prepared, "tiny_feed_corpus", "base") and tb.is_prepared(prepared, "tiny_feed", "base")


def test_item_times_and_authors_never_guess():
    """Missing times are UNKNOWN_TIME, missing authors "", the first author column wins; MovieLens
    release years become 1 January UTC of that year (compared with the calendar, pre-1970 included)."""
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "created_at": [5.0, np.nan, 7.0],
                          "author_name": ["Ann", None, "Bo"], "author": ["u1", "u2", np.nan]})
    assert tb.item_created_at(items).tolist() == [5, tb.UNKNOWN_TIME, 7]
    assert tb.item_authors(items) == ["u1", "u2", ""]
    assert tb.item_authors(items.drop(columns="author")) == ["Ann", "", "Bo"]
    assert tb.item_created_at(items.drop(columns="created_at")).tolist() == [tb.UNKNOWN_TIME] * 3
    years = pd.DataFrame({"year": ["1995", "", "1931"]})
    import calendar
    assert tb.MovielensFeedCorpus._item_created_at(None, years).tolist() == [
        calendar.timegm((1995, 1, 1, 0, 0, 0)), tb.UNKNOWN_TIME, calendar.timegm((1931, 1, 1, 0, 0, 0))]


def _decoded(tok, tokens, segment_ids, slot, segments):
    """The text of the prompt in `slot` of one shard's rows, checked to be wrapped in BOS/EOS."""
    row, segment = divmod(int(slot), segments)
    ids = tokens[row][segment_ids[row] == segment + 1]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    return tok.decode(ids[1:-1])


def test_prepared_data_feeds_the_pipeline(prepared):
    """The batches built from the prepared records decode back to those records' prompts."""
    sources, fmt, _ = tb.open_prepared(prepared, "tiny_feed", "base")
    tok = byte_tokenizer()
    config = BatchConfig(examples_per_shard=4, length=512, num_hard_negatives=2, member_rows=2, item_rows=2)
    batch = next(iter(train_batches(sources["train"], tok, fmt, config, seed=0, shard_index=0, shard_count=1)))
    assert batch.member_tokens.shape == (1, 2, 512) and batch.example_mask.sum() >= 1
    records = [{k: (text(v) if isinstance(v, bytes) else [text(x) for x in v] if isinstance(v, list) else v)
                for k, v in r.items()} for r in sources["train"]]
    segments = config.max_segments
    for b in np.flatnonzero(batch.example_mask[0]):
        member = _decoded(tok, batch.member_tokens[0], batch.member_segment_ids[0], batch.member_slot[0, b], segments)
        positive = _decoded(tok, batch.item_tokens[0], batch.item_segment_ids[0], batch.positive_slot[0, b], segments)
        negatives = [_decoded(tok, batch.item_tokens[0], batch.item_segment_ids[0], s, segments)
                     for s in batch.negative_slot[0, b] if s >= 0]

        def member_text(r, k):  # prefix, profile, the newest k history items whole, suffix
            return r["member_prefix"] + "".join(r["member_profile"]) + "".join(r["member_history"][:k]) + r["member_suffix"]

        matches = [r for r in records if r["positive_prompt"] == positive and r["negative_prompts"][:2] == negatives
                   and any(member == member_text(r, k) for k in range(len(r["member_history"]) + 1))]
        assert matches, f"example {b}: no training record has these prompts:\n{member}\n{positive}\n{negatives}"
        assert int(batch.positive_key[0, b]) == item_key(matches[0]["positive_id"])
    corpus, fmt, _ = tb.open_prepared(prepared, "tiny_feed_corpus", "base")
    prompt_of = {text(r["item_id"]): text(r["item_prompt"]) for r in corpus["corpus"]}
    ids = []
    for b in embedding_batches(corpus["corpus"], tok, fmt, config, tower="item", shard_index=0, shard_count=1):
        per_shard = b.slot.shape[1]
        for n, e in zip(*np.nonzero(b.example_mask)):
            item_id = b.ids[n * per_shard + e]
            assert _decoded(tok, b.tokens[n], b.segment_ids[n], b.slot[n, e], segments) == prompt_of[item_id], item_id
            ids.append(item_id)
    assert sorted(ids) == sorted(prompt_of) and len(ids) == 60


def test_preparation_is_deterministic(prepared, tmp_path):
    build(TinyFeed, tmp_path)

    def digest(root):
        files = sorted(root.glob(f"tiny_feed/base/{tb.VERSION}/*"))
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    assert digest(tmp_path) == digest(prepared) != []


def test_reading_an_unprepared_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="build"):
        tb.open_prepared(tmp_path, "movielens_feed", "100k")
    with pytest.raises(ValueError, match="numbers"):
        tb.FeedConfig(name="x", numbers="log")


def test_storage_per_example_does_not_grow_with_history(tmp_path):
    """A training record holds ids and an end in the member's timeline, not its history's text: one
    member with 40 or 400 engagements costs the same bytes per training example."""
    per_example = []
    for n in (40, 400):
        users = pd.DataFrame({"user_id": ["m0", "m1"], "headline": ["a", "b"], "industry": ["x", "y"]})
        items = pd.DataFrame({"item_id": [f"p{i}" for i in range(n)], "text": [f"post {i} " * 20 for i in range(n)],
                              "created_at": np.arange(n), "post_type": ["article"] * n, "like_count": np.arange(n)})
        interactions = pd.DataFrame({"user_id": ["m0"] * n, "item_id": items["item_id"],
                                     "timestamp": np.arange(n) + 10, "engaged": [True] * n})
        tables = validate_tables(users, items, interactions, SCHEMA, f"long{n}")

        class Long(tb._FeedBuilder):
            name = f"long{n}"
            BUILDER_CONFIGS = [tb.FeedConfig(name="base")]

            def _load_tables(self):
                return tables

        build(Long, tmp_path)
        sources, _, _ = tb.open_prepared(tmp_path, f"long{n}", "base")
        assert len(sources["train"][len(sources["train"]) - 1]["member_history"]) >= 1
        per_example.append((tmp_path / f"long{n}/base/{tb.VERSION}/train.arrow").stat().st_size / len(sources["train"]))
    assert per_example[1] < 64 and per_example[1] <= per_example[0]
