"""The whole ranker path through the CLI on the committed Parquet tables: a dual encoder trained and
embedded, a ranker trained with negatives from its neighbours, then `ff-jax eval` on the ranker's
workdir reranking the retriever's top-K. And the wrong kind of workdir where another is expected."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ff_jax import cli

# Its own group: the module's runs are in-process CLI calls sharing one fixture, with no reason to
# queue behind the subprocess trainings of "train_subprocess" on one worker.
pytestmark = [pytest.mark.xdist_group("rerank_cli"), pytest.mark.slow]

TABLES = Path(__file__).resolve().parents[1] / "data" / "tables_parquet"
DATA = [f"--gin.TABLES={TABLES}", "--gin.DATASET=tables", "--gin.TablesOptions.rating_threshold=4",
        "--gin.TablesOptions.numeric_ids=True"]
TOP_K = 20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    data_dir, retriever, ranker = root / "tfds", root / "retriever", root / "ranker"
    common = [*DATA, f"--gin.DATA_DIR={data_dir}"]
    assert cli.main(["train", "--gin_file=experiments/tiny_smoke.gin", *common, f"--workdir={retriever}",
                     "--gin.STEPS=4", "--gin.train.eval_every=-1", "--gin.make_mesh.num_devices=1",
                     "--gin.BatchConfig.examples_per_shard=2", "--gin.train.progress=False"]) == 0
    assert cli.main(["embed", f"--workdir={retriever}"]) == 0
    ranker_flags = ["rank-train", "--gin_file=ranker/tiny_smoke.gin", *common, f"--gin.RETRIEVER={retriever}",
                    "--gin.STEPS=3", "--gin.train_ranker.progress=False", "--gin.train_ranker.tensorboard=False"]
    assert cli.main([*ranker_flags, f"--workdir={ranker}"]) == 0
    return retriever, ranker, ranker_flags


def test_eval_of_a_ranker_workdir_reranks_the_retrievers_top_k(runs):
    retriever, ranker, _ = runs
    assert cli.main(["eval", f"--workdir={ranker}", f"--gin.rerank_run.top_k={TOP_K}",
                     "--gin.rerank_run.progress=False"]) == 0
    report = json.loads((ranker / "eval" / "rerank_test.json").read_text())
    assert report["top_k"] == TOP_K and report["members"] > 0 and report["retrieval_weight"] == 0.0
    before, after = report["retrieval"]["metrics"], report["reranked"]["metrics"]
    assert set(before) == set(after) and "all" in before and len(before) > 1  # overall and by cohort
    for cohort in before:
        # Reranking reorders the same top-K: what it found at K is unchanged, the order is not.
        np.testing.assert_allclose(after[cohort][f"recall@{TOP_K}"], before[cohort][f"recall@{TOP_K}"])
        assert after[cohort]["users"] == before[cohort]["users"] > 0
    # The paired NDCG@10 gain (member by member) is the difference of the two reports' means, and the
    # ranker changed the order somewhere.
    gain = report["ndcg@10_gain"]
    assert gain["members"] == report["members"] == before["all"]["users"]
    np.testing.assert_allclose(gain["mean"], after["all"]["ndcg@10"] - before["all"]["ndcg@10"], atol=1e-9)
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    assert after["all"]["mrr"] != before["all"]["mrr"]
    # Fresh and seen targets (issue 27): the same targets before and after, and the same found at K.
    fresh_before, fresh_after = report["retrieval"]["freshness"], report["reranked"]["freshness"]
    assert set(fresh_after) == {"fresh", "seen"} and fresh_after["seen"]["targets"] > 0
    for kind in fresh_after:
        assert fresh_after[kind]["targets"] == fresh_before[kind]["targets"]
        np.testing.assert_allclose(fresh_after[kind][f"recall@{TOP_K}"], fresh_before[kind][f"recall@{TOP_K}"])

    # The fusion weight chosen on the validation split: the grid's best validation NDCG@10.
    assert cli.main(["embed", f"--workdir={retriever}", "--gin.EmbedConfig.split=validation",
                     "--gin.EmbedConfig.towers=('member',)"]) == 0
    assert cli.main(["eval", f"--workdir={ranker}", f"--gin.rerank_run.top_k={TOP_K}",
                     "--gin.rerank_run.retrieval_weight=None", "--gin.rerank_run.progress=False"]) == 0
    fused = json.loads((ranker / "eval" / "rerank_test.json").read_text())
    curve = {float(w): v for w, v in fused["validation_ndcg@10"].items()}
    assert fused["validation_members"] > 0 and fused["retrieval_weight"] in curve
    # The best validation NDCG@10, ties going to the smaller weight (nearer the ranker alone).
    assert fused["retrieval_weight"] == min(w for w, v in curve.items() if v == max(curve.values()))
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731  (NaN-safe)
    assert same(fused["retrieval"], report["retrieval"])  # the same test members and retrieved lists
    # The ranker alone (weight 0) is the first report's reranking, whichever weight was chosen.
    if fused["retrieval_weight"]:
        assert same(fused["ranker_alone"], report["reranked"])
    else:
        assert "ranker_alone" not in fused and same(fused["reranked"], report["reranked"])


def test_member_negatives_come_from_each_records_own_retrieved_list(runs, capsys):
    """`ff-jax embed` of the training split gives one vector per training record; with
    negatives_from="member" each row's negatives are drawn from the items nearest that record's
    vector, its other engaged items left out (checked against an exact numpy top-K); a retrieval
    prior carries the retriever's cosines; retrieved_positives_only keeps the records whose engaged
    item is in their pool; and before that embedding exists the run is refused with the command
    that makes it."""
    from ff_jax import gin_cli
    from ff_jax.data.pipeline import as_text
    from ff_jax.model.tokenizer import byte_tokenizer
    from ff_jax.rank.data import RankerData
    import ff_jax.rank  # noqa: F401  (registers the configurables)
    from ff_jax.retrieval.embedding_store import read_tower
    from ff_jax.data.feed_data import FeedData

    retriever, _, _ = runs
    bindings = ["DATASET='tables'", f"TABLES='{TABLES}'", "TablesOptions.rating_threshold=4",
                "TablesOptions.numeric_ids=True", f"DATA_DIR='{retriever.parent / 'tfds'}'",
                f"RankerData.retriever='{retriever}'", "RankerData.negatives_from='member'",
                "RankerData.neighbour_pool=6"]
    with gin_cli.configured(["ranker/tiny_smoke.gin"], bindings):
        data = RankerData(feed=FeedData())
    tokenizer = byte_tokenizer()
    with pytest.raises(ValueError, match="EmbedConfig.split=train"):
        data.train_iterator(tokenizer, num_shards=1)

    assert cli.main(["embed", f"--workdir={retriever}", "--gin.EmbedConfig.split=train",
                     "--gin.EmbedConfig.towers=('member',)"]) == 0
    records = data.feed.open_dataset("tables")[0]["train"]
    ids, members = read_tower(retriever / "embeddings" / "members_train")
    assert ids.tolist() == [f"{as_text(records[i]['user_id'])}#{i}" for i in range(len(records))]

    item_ids, prompts = data.corpus()
    stored, vectors = read_tower(retriever / "embeddings" / "items")
    vectors = vectors[[stored.tolist().index(i) for i in item_ids]]
    engaged = {}
    for i in range(len(records)):
        engaged.setdefault(as_text(records[i]["user_id"]), set()).add(item_ids.index(as_text(records[i]["positive_id"])))
    scores = members @ vectors.T
    positives = [item_ids.index(as_text(records[i]["positive_id"])) for i in range(len(records))]
    for i in range(len(records)):  # the member's other engaged items are left out of its pool
        scores[i, sorted(engaged[as_text(records[i]["user_id"])] - {positives[i]})] = -np.inf
    exact = np.argsort(-scores, axis=1, kind="stable")[:, :6]
    users = [as_text(records[i]["user_id"]) for i in range(len(records))]
    engaged_ids = {u: {item_ids[p] for p in ps} for u, ps in engaged.items()}
    positive_ids = [item_ids[p] for p in positives]
    pools, cosine = data._pools(item_ids, users, positive_ids, engaged_ids)
    for i in range(len(records)):
        assert set(pools[i].tolist()) == set(exact[i].tolist())

    from ff_jax.rank.data import _RowMaker
    fmt = data.feed.open_dataset("tables")[1]
    maker = _RowMaker(data, tokenizer, fmt, item_ids, prompts, pools, engaged_ids)
    question = data.ranker.question
    checked = 0  # rows whose pool had room for every negative: their negatives all come from it
    for i in range(0, len(records), max(1, len(records) // 20)):
        row = maker((i, records[i]), np.random.default_rng(i))
        seg = row["segment_ids"]
        taken = {as_text(records[i]["positive_id"]), *map(as_text, records[i]["negative_ids"][: data.impressed])}
        room = [p for p in exact[i] if item_ids[p] not in taken]
        assert not set(exact[i]) & (engaged[as_text(records[i]["user_id"])] - {positives[i]})
        first_negative = 3 + len(records[i]["negative_ids"][: data.impressed])  # context, engaged, impressed
        for s in range(first_negative, data.candidates + 2):
            text = tokenizer.decode(row["tokens"][seg == s].tolist())[: -len(question)]
            position = next(p for p, prompt in enumerate(prompts) if prompt.startswith(text))
            if len(room) >= data.candidates - first_negative + 2:  # a short pool is topped up uniformly
                assert position in room, (i, item_ids[position])
                checked += 1
        assert not row["prior"].any() and cosine is None  # no retrieval prior asked for
    assert checked > 0  # the conditional check above ran

    # With a retrieval prior w each candidate carries w x the cosine of the record's vector and its own.
    prior_data = dataclasses.replace(data, retrieval_prior=10.0)
    pools, cosine = prior_data._pools(item_ids, users, positive_ids, engaged_ids)
    maker = _RowMaker(prior_data, tokenizer, fmt, item_ids, prompts, pools, engaged_ids, cosine)
    for i in range(0, len(records), max(1, len(records) // 10)):
        row = maker((i, records[i]), np.random.default_rng(i))
        seg = row["segment_ids"]
        texts = [tokenizer.decode(row["tokens"][seg == s].tolist())[: -len(question)] for s in range(2, data.candidates + 2)]
        positions = [next(p for p, prompt in enumerate(prompts) if prompt.startswith(t)) for t in texts]
        np.testing.assert_allclose(row["prior"], 10.0 * (vectors[positions] @ members[i]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="RankerData.retrieval_prior needs"):
        dataclasses.replace(data, negatives_from="item", retrieval_prior=1.0)

    # retrieved_positives_only: the records whose engaged item is in their own exact top 6.
    only = dataclasses.replace(data, retrieved_positives_only=True)
    kept = only._trained_records(item_ids, positive_ids, pools)
    assert list(kept) == [i for i in range(len(records)) if positives[i] in exact[i]] and 0 < len(kept) < len(records)
    assert list(data._trained_records(item_ids, positive_ids, pools)) == list(range(len(records)))
    assert next(only.train_iterator(tokenizer, num_shards=1)).labels.shape[-1] == data.candidates
    # The dual encoder's own eval is untouched by the routing.
    assert cli.main(["eval", f"--workdir={retriever}", "--gin.evaluate_run.ann=False",
                     "--gin.evaluate_run.progress=False"]) == 0
    assert (retriever / "eval" / "metrics_test.json").exists()


def test_a_workdir_of_the_wrong_kind_is_refused_naming_it(runs, tmp_path, capsys):
    retriever, ranker, ranker_flags = runs
    # A ranker where the retriever (a dual encoder) is expected.
    assert cli.main(["eval", f"--workdir={ranker}", f"--gin.RETRIEVER={ranker}"]) == 2
    assert f"{ranker} holds a ranker run, not a dual encoder" in capsys.readouterr().err
    # A ranker as init_from, which takes a dual encoder.
    assert cli.main([*ranker_flags, f"--workdir={tmp_path / 'new'}", f"--gin.INIT_FROM={ranker}"]) == 2
    assert "holds a ranker run, not a dual encoder" in capsys.readouterr().err
    # `ff-jax embed` on a ranker: refused by kind before anything is loaded or written.
    assert cli.main(["embed", f"--workdir={ranker}"]) == 2
    assert f"{ranker} holds a ranker run, not a dual encoder" in capsys.readouterr().err
    assert not (ranker / "embeddings").exists()
    # A ranker workdir given to the dual encoder's training: refused before anything is written.
    assert cli.main(["rank-train", "--gin_file=ranker/tiny_smoke.gin", *DATA, "--gin.DATA_DIR=/nonexistent",
                     f"--workdir={retriever}"]) == 2
    assert f"{retriever} holds a dual encoder run, not a ranker" in capsys.readouterr().err


def test_ranker_trains_data_parallel_with_lora(tmp_path):
    """Two data shards (N = 2 on a 2-device mesh) and LoRA adapters: the step runs sharded, each
    step sees both shards' members, and only adapters and the head train (the backbone's kernels
    are frozen, so the optimiser state holds adapters and head only)."""
    workdir = tmp_path / "lora"
    assert cli.main(["rank-train", "--gin_file=ranker/tiny_smoke.gin", *DATA, f"--gin.DATA_DIR={tmp_path / 'tfds'}",
                     f"--workdir={workdir}", "--gin.STEPS=3", "--gin.make_mesh.num_devices=2",
                     "--gin.train.model_overrides={'lora_rank': 4}", "--gin.train_ranker.progress=False",
                     "--gin.train_ranker.tensorboard=False"]) == 0
    steps = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [s["examples"] for s in steps] == [4.0] * 3  # 2 shards x 2 members
    assert json.loads((workdir / "run.json").read_text())["model"]["lora_rank"] == 4
    # The saved TrainState's keys (orbax's metadata of the flat dict): what the optimiser updates.
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    keys = json.loads((workdir / "checkpoints" / str(step) / "state" / "_METADATA").read_text())["tree_metadata"]
    trained = [k.strip("(',)") for k in keys if k.startswith("('params/")]
    assert "params/kernel/value" in trained and "params/bias/value" in trained  # the ranker's head
    assert any("lora_a" in k for k in trained)
    assert all("lora_" in k or k in ("params/kernel/value", "params/bias/value") for k in trained), trained


def test_init_from_starts_the_backbone_from_the_dual_encoders_checkpoint(runs):
    """The init_from ranker's backbone is the dual encoder's newest checkpoint, read here straight
    from orbax's flat state; the ranker's own head is new."""
    import orbax.checkpoint as ocp

    from ff_jax import gin_cli
    from ff_jax.model.sharding import logical_axis_rules, make_mesh
    from ff_jax.rank.data import RankerData
    import ff_jax.rank  # noqa: F401  (registers the configurables)
    from ff_jax.rank.train import build_ranker
    from ff_jax.train.run import dual_encoder_model
    from ff_jax.data.feed_data import FeedData

    retriever, _, _ = runs
    data_dir = retriever.parent / "tfds"
    bindings = ["DATASET='tables'", f"TABLES='{TABLES}'", "TablesOptions.rating_threshold=4",
                "TablesOptions.numeric_ids=True", f"DATA_DIR='{data_dir}'"]
    with gin_cli.configured(["ranker/tiny_smoke.gin"], bindings):
        data = RankerData(feed=FeedData())
        model = dual_encoder_model()
        config, pretrained, overrides = model["model_config"], model["pretrained"], model["model_overrides"]
        mesh, rules = make_mesh(num_devices=1), logical_axis_rules()
        started, _ = build_ranker(data, config, pretrained, dict(overrides), str(retriever), mesh, rules, seed=0)
        fresh, _ = build_ranker(data, config, pretrained, dict(overrides), None, mesh, rules, seed=0)
    step = max(int(p.name) for p in (retriever / "checkpoints").iterdir() if p.name.isdigit())
    saved = ocp.PyTreeCheckpointer().restore(retriever / "checkpoints" / str(step) / "state")
    for path, got in (("embed/embedding", started.backbone.embed.embedding),
                      ("layers/1/mlp/up/kernel", started.backbone.layers[1].mlp.up.kernel)):
        want = np.asarray(saved[f"params/backbone/{path}/value"])
        np.testing.assert_array_equal(np.asarray(got[...]), want)
    assert not np.array_equal(np.asarray(fresh.backbone.embed.embedding[...]),
                              np.asarray(started.backbone.embed.embedding[...]))
