"""The embed job: ids stay with their vectors through packing, a crash resumes without recomputing
finished shards, Matryoshka widths and half-precision storage, refused settings and corrupt folders;
end to end through `ff-jax embed` / `ff-jax eval` with a tiny model on 8 CPU devices, checked
against the model run one prompt at a time and against a restored checkpoint."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ff_jax.data import prepared as tb
from ff_jax.data.pipeline import BatchConfig, PromptTokenizer, embedding_batches
from ff_jax.data.prompts import PromptFormat
from ff_jax.data.schema import Column, generic_schema
from ff_jax.data.tables import validate_tables
from ff_jax.model.tokenizer import byte_tokenizer
from ff_jax.retrieval.embed_job import embed_records
from ff_jax.retrieval.embedding_store import EmbeddingStoreError, ShardWriter, read_tower, truncate_normalise

WIDTH, SEGMENTS = 16, 4
FMT = PromptFormat(markers=("<item>", "</item>", "<text>", "</text>"), item_last_field="<text>",
                   item_closing="</text></item>")
CONFIG = BatchConfig(examples_per_shard=4, length=96, item_budget=96, mode="packed", max_segments=SEGMENTS, item_rows=3)
TABLE = np.random.default_rng(0).normal(size=(600, WIDTH)).astype(np.float32)


def records(n=35):
    return [{"item_id": f"p{i:03d}", "item_prompt": f"<item><text>post {i} " + "word " * (i % 9) + "</text></item>"}
            for i in range(n)]


def fake_encode(batch):
    """Sum of a fixed token table over each slot's segment: a stand-in model that packing must not mix up."""
    tokens, seg, slot = batch.tokens, batch.segment_ids, np.maximum(batch.slot, 0)
    n, r, _ = tokens.shape
    member = (seg[..., None] == np.arange(1, SEGMENTS + 1)).astype(np.float32)
    pooled = np.einsum("nrls,nrld->nrsd", member, TABLE[tokens]).reshape(n, r * SEGMENTS, WIDTH)
    return np.take_along_axis(pooled, slot[..., None], axis=1).reshape(-1, WIDTH)


def make_batches(part):
    return embedding_batches(part, byte_tokenizer(), FMT, CONFIG, tower="item", num_shards=2, shard_index=0,
                             shard_count=1, read_threads=1)


def settings(n=35, dtype="float32", dims=(4, 8, WIDTH)):
    return {"records": n, "shard_size": 10, "width": WIDTH, "dims": list(dims), "dtype": dtype, "model": "fake"}


def reference(recs):
    tokenise = PromptTokenizer(byte_tokenizer(), FMT, CONFIG)
    return np.stack([TABLE[tokenise.item_only(r)["tokens"]].sum(0) for r in recs])


def run(directory, recs, encode=fake_encode, **kw):
    writer = ShardWriter(directory, settings(len(recs), **kw))
    return embed_records(recs, writer, make_batches, encode, "item_id", progress=False)


def test_ids_keep_their_vectors_through_packing(tmp_path):
    recs = records()
    assert run(tmp_path, recs) == 4
    ids, vectors = read_tower(tmp_path)
    assert ids.tolist() == [r["item_id"] for r in recs]
    np.testing.assert_allclose(vectors, truncate_normalise(reference(recs), WIDTH), atol=1e-5)
    # The same vectors from the raw prompt text (bos + bytes and markers + eos), not through PromptTokenizer.
    tok = byte_tokenizer(FMT.markers)
    raw = np.stack([TABLE[[tok.bos_id, *tok.encode(r["item_prompt"]), tok.eos_id]].sum(0) for r in recs])
    np.testing.assert_allclose(vectors, truncate_normalise(raw, WIDTH), atol=1e-5)


def test_embedding_batches_decode_to_the_prompts_of_their_ids():
    """Every real example's slot, decoded, is the source prompt of the id listed beside it."""
    recs = records()
    prompt_of = {r["item_id"]: r["item_prompt"] for r in recs}
    tok, seen = byte_tokenizer(FMT.markers), []
    for batch in make_batches(recs):
        n, per_shard = batch.slot.shape
        assert batch.segment_ids.max() >= 2  # really packed
        for s in range(n):
            for b in np.flatnonzero(batch.example_mask[s]):
                row, segment = divmod(int(batch.slot[s, b]), SEGMENTS)
                tokens = batch.tokens[s, row][batch.segment_ids[s, row] == segment + 1]
                item_id = batch.ids[s * per_shard + b]
                assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
                assert tok.decode(tokens[1:-1]) == prompt_of[item_id], item_id
                seen.append(item_id)
    assert sorted(seen) == sorted(prompt_of)


def test_a_crash_resumes_without_recomputing_finished_shards(tmp_path):
    recs = records()
    run(tmp_path / "whole", recs)

    calls = {"n": 0}

    def crashing(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # 2 batches per 10-record shard: dies inside shard 2
            raise RuntimeError("preempted")
        return fake_encode(batch)

    with pytest.raises(RuntimeError, match="preempted"):
        run(tmp_path / "resumed", recs, crashing)
    with pytest.raises(EmbeddingStoreError, match="incomplete, 2 of 4 shards done"):
        read_tower(tmp_path / "resumed")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "resumed").glob("shard-*.npy")}
    assert sorted({name[:11] for name in before}) == ["shard-00000", "shard-00001"]

    embedded = []

    def counting(batch):
        embedded.extend(i for i, m in zip(batch.ids, batch.example_mask.reshape(-1)) if m)
        return fake_encode(batch)

    assert run(tmp_path / "resumed", recs, counting) == 2
    assert sorted(embedded) == [r["item_id"] for r in recs[20:]]  # only shards 2 and 3
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "resumed").glob("shard-*.npy")}
    assert all(after[name] == value for name, value in before.items())  # untouched files
    for name in after:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert run(tmp_path / "resumed", recs, counting) == 0  # finished: nothing left to do


def test_matryoshka_widths_are_renormalised_prefixes_and_half_precision_is_close(tmp_path):
    recs = records(12)
    raw = reference(recs)
    for dtype, tolerance in (("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 2e-2)):
        run(tmp_path / dtype, recs, dtype=dtype)
        for dim in (4, 8, WIDTH):
            _, vectors = read_tower(tmp_path / dtype, dim=dim)
            expected = raw[:, :dim] / np.linalg.norm(raw[:, :dim], axis=1, keepdims=True)
            assert vectors.dtype == np.float32 and vectors.shape == (12, dim)
            np.testing.assert_allclose(vectors, expected, atol=tolerance)
    assert np.load(tmp_path / "bfloat16" / "shard-00000.d4.npy").dtype == np.uint16  # raw bf16 bits
    assert np.load(tmp_path / "float16" / "shard-00000.d4.npy").dtype == np.float16
    with pytest.raises(EmbeddingStoreError, match="width 5 was not stored"):
        read_tower(tmp_path / "float32", dim=5)


def test_other_settings_are_refused_by_name_and_corruption_is_detected(tmp_path):
    recs = records(12)
    run(tmp_path, recs)
    with pytest.raises(EmbeddingStoreError, match="dtype: 'float32' on disk, 'float16' now"):
        ShardWriter(tmp_path, settings(12, dtype="float16"))
    writer = ShardWriter(tmp_path, settings(12, dtype="float16"), overwrite=True)
    assert writer.pending() == [0, 1] and not list(tmp_path.glob("shard-*"))
    embed_records(recs, writer, make_batches, fake_encode, "item_id", progress=False)
    victim = tmp_path / "shard-00001.d16.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(EmbeddingStoreError, match="shard-00001.d16.npy: checksum mismatch"):
        read_tower(tmp_path)
    with pytest.raises(ValueError, match="must lie in 1..16 and include the full width"):
        ShardWriter(tmp_path / "x", settings(12, dims=(4, 8)))


def test_only_the_primary_process_writes(tmp_path):
    recs = records(12)
    secondary = ShardWriter(tmp_path / "out", settings(12), primary=False)
    assert embed_records(recs, secondary, make_batches, fake_encode, "item_id", progress=False) == 2
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- end to end

SCHEMA = generic_schema(users=[Column("headline", "text")], items=[Column("topic", "categorical")])


class EmbedFeed(tb._FeedBuilder):
    """A tiny feed: members of two topics engage with posts of their topic."""

    name = "embed_feed"
    BUILDER_CONFIGS = [tb.FeedConfig(name="base")]

    def _load_tables(self):
        rng = np.random.default_rng(0)
        topic_of_user = rng.integers(0, 2, 20)
        users = pd.DataFrame({"user_id": [f"m{i}" for i in range(20)],
                              "headline": [("cook" if t else "coder") + f" {i}" for i, t in enumerate(topic_of_user)]})
        items = pd.DataFrame({"item_id": [f"p{i:02d}" for i in range(40)], "topic": ["food", "code"] * 20,
                              "text": [f"post {i} about " + ("recipes" if i % 2 == 0 else "python") for i in range(40)]})
        rows = []
        for t in range(600):
            u = int(rng.integers(20))
            item = int(rng.integers(20)) * 2 + (0 if topic_of_user[u] else 1)
            rows.append((f"m{u}", f"p{item:02d}", 1_600_000_000 + t * 60, bool(rng.random() < 0.8)))
        interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "engaged"])
        return validate_tables(users, items, interactions, SCHEMA, "embed_feed")


class EmbedFeedCorpus(EmbedFeed):
    name = "embed_feed_corpus"


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_e2e")
    for cls in (EmbedFeed, EmbedFeedCorpus):
        cls(config="base", data_dir=str(root / "data")).download_and_prepare()
    gin_file = root / "run.gin"
    gin_file.write_text("\n".join([
        "include 'model/tiny.gin'", "include 'runs/train.gin'", f"DATA_DIR = '{root / 'data'}'",
        "DATASET = 'embed_feed'", "DATASET_CONFIG = 'base'", "FeedData.prepare = False",
        "BatchConfig.examples_per_shard = 2", "BatchConfig.length = 256", "BatchConfig.member_budget = 256",
        "BatchConfig.item_budget = 128", "EmbedConfig.shard_size = 16", "EmbedConfig.dims = (16,)", ""]))
    return root, gin_file


def single_prompt_embeddings(model, tokenizer, fmt, config, recs, tower, length=256):
    """The model on each prompt alone (one row, right-padded, no packing, one device), mean-pooled."""
    from flax import nnx

    @nnx.jit
    def hidden(model, tokens, segment_ids):
        return model.backbone(tokens, segment_ids=segment_ids, compute_logits=False).hidden

    tokenise = PromptTokenizer(tokenizer, fmt, config)
    out = []
    for r in recs:
        ids = (tokenise.item_only(r) if tower == "item" else tokenise.member_only(r))["tokens"]
        tokens, segments = np.zeros((1, length), np.int32), np.zeros((1, length), np.int32)
        tokens[0, : len(ids)], segments[0, : len(ids)] = ids, 1
        pooled = np.asarray(hidden(model, tokens, segments)[0, : len(ids)], np.float64).mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.stack(out)


def test_embed_and_eval_commands_end_to_end(run_files, capsys):
    from ff_jax.model import presets
    from ff_jax.model.sharding import logical_axis_rules, make_mesh
    from ff_jax import cli
    from ff_jax.retrieval.eval_data import feed_eval_data
    from ff_jax.train import loop, step as steps
    from ff_jax.train.checkpointing import Checkpointer
    from ff_jax.train.dual_encoder import EncoderConfig
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.optimizer import OptimizerConfig, make_optimizer

    root, gin_file = run_files
    workdir = root / "work"
    assert cli.main(["embed", f"--gin_file={gin_file}", f"--workdir={workdir}",
                     "--gin.EmbedConfig.zero_shot=True"]) == 0
    item_ids, items = read_tower(workdir / "embeddings" / "items")
    member_ids, members = read_tower(workdir / "embeddings" / "members_test")
    assert len(item_ids) == 40 and json.loads((workdir / "embeddings/items/manifest.json").read_text())[
        "settings"]["dims"] == [16, 64]

    # Parity: the same (seeded) model on each prompt alone, without packing or sharding.
    from ff_jax.data.feed_data import FeedData

    data = FeedData(data_dir=str(root / "data"), dataset="embed_feed", config="base", prepare=False,
                    tokenizer="byte", batch=BatchConfig(length=256, member_budget=256, item_budget=128))
    mesh, rules = make_mesh(), logical_axis_rules()
    model, tokenizer = loop.build_model(data, EncoderConfig(), InfoNCE(), presets.tiny(vocab_size=512), None, {},
                                        mesh, rules, 0)
    sources, fmt, _ = data.open_dataset("embed_feed")
    corpus = data.open_dataset("embed_feed_corpus")[0]["corpus"]
    np.testing.assert_allclose(items[:5], single_prompt_embeddings(model, tokenizer, fmt, data.batch,
                                                                   [corpus[i] for i in range(5)], "item"), atol=2e-4)
    test = sources["test"]
    np.testing.assert_allclose(members[:3], single_prompt_embeddings(model, tokenizer, fmt, data.batch,
                                                                     [test[i] for i in range(3)], "member"), atol=2e-4)

    # A checkpoint of that initial state restores to the same embeddings.
    graphdef, state, _ = steps.init_train_state(model, make_optimizer(OptimizerConfig()), 0, 0, mesh, rules)
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(0, state, force=True)
    ckpt.close()
    assert cli.main(["embed", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.EmbedConfig.output='restored'",
                       "--gin.EmbedConfig.towers=('item',)"]) == 0
    restored_ids, restored = read_tower(workdir / "restored" / "items")
    assert restored_ids.tolist() == item_ids.tolist()
    np.testing.assert_allclose(restored, items, atol=1e-6)

    assert cli.main(["eval", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.evaluate_run.ks=(5, 10)",
                      "--gin.evaluate_run.baselines=('popularity',)"]) == 0
    report = json.loads((workdir / "eval" / "metrics_test.json").read_text())
    # The baseline ranks the same members as the model: equal to Popularity evaluated on its own.
    from ff_jax.retrieval.baselines import Popularity
    from ff_jax.retrieval.evaluate import evaluate_recommender

    training, members = feed_eval_data(data, "test")
    evaluated = [m for m in members if m.targets]
    alone = evaluate_recommender(Popularity().fit(training), evaluated, training, ks=(5, 10), progress=False)
    assert report["baselines"]["popularity"]["metrics"]["all"] == pytest.approx(alone["metrics"]["all"])
    capsys.readouterr()
    assert cli.main(["eval", f"--gin_file={gin_file}", f"--workdir={workdir}",
                     "--gin.evaluate_run.baselines=('oracle',)"]) == 2
    assert "ff-jax eval: error: evaluate_run.baselines: unknown ['oracle']" in capsys.readouterr().err
    # The model's own figures, recomputed with numpy from the stored embeddings: each evaluated member
    # ranks the whole corpus by cosine at each Matryoshka width, its engaged history left out.
    stored_member_ids, stored_members = read_tower(workdir / "embeddings" / "members_test")
    vector_of = dict(zip(item_ids.tolist(), items))
    corpus = np.stack([vector_of[i] for i in training.corpus_ids]).astype(np.float64)
    member_row = {m: r for r, m in enumerate(stored_member_ids.tolist())}
    assert len(evaluated) == report["members_evaluated"] > 0
    for dim in (16, 64):
        unit = lambda x: x[..., :dim] / np.linalg.norm(x[..., :dim], axis=-1, keepdims=True)
        recalls = {5: [], 10: []}
        for m in evaluated:
            scores = unit(corpus) @ unit(stored_members[member_row[m.user_id]].astype(np.float64))
            seen = {training.corpus_ids.index(i) for i in m.engaged_history}
            order = [j for j in np.argsort(-scores, kind="stable") if j not in seen]
            targets = {training.corpus_ids.index(t) for t in m.targets}
            for k in recalls:
                recalls[k].append(len(targets & set(order[:k])) / len(targets))
        got = report["by_dim"][str(dim)]["metrics"]["all"]
        for k, values in recalls.items():
            assert got[f"recall@{k}"] == pytest.approx(np.mean(values), abs=1e-9), (dim, k)
    # Popularity-similarity: every (member, item) pair is sampled here (20 members, 40 items).
    popularity = np.asarray((training.engagements > 0).sum(axis=0), np.float64).ravel()
    rows = [member_row[m.user_id] for m in evaluated]
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    cosine = unit(stored_members[rows].astype(np.float64)) @ unit(corpus).T
    expected = stats.spearmanr(np.broadcast_to(popularity, cosine.shape).ravel(), cosine.ravel()).statistic
    assert report["popularity_similarity"]["spearman"] == pytest.approx(expected, abs=1e-6)
    assert report["popularity_similarity"]["pairs"] == cosine.size
    assert set(report["by_dim"]) == {"16", "64"}
    assert report["ann"]["ann_recall@10"] == pytest.approx(1.0)  # a 40-item corpus is searched exactly
    assert -1 <= report["popularity_similarity"]["spearman"] <= 1
    assert report["members_evaluated"] == len(member_ids)
