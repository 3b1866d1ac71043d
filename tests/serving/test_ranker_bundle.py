"""A bundle with the ranker: its exported prefill and score steps give the checkpoint's scores
(<= 1e-5 fp32), its prompts are RankerData's, the server returns the retrieved top-k in ranker
order with both scores (the same whether the prefill overlaps retrieval or not), and tampered
ranker files are refused."""

import json
import shutil

import numpy as np
import pytest

from ff_jax.files import sealed
from ff_jax.serving import bundle as layout
from ff_jax.serving.bundle import BundleError, load_bundle
from ff_jax.serving.prompting import HistoryItem, RankerPrompts, ServingPrompts
from ff_jax.serving.ranker import ServedRanker

from .test_server import CONFIG, start


@pytest.fixture(scope="module")
def loaded(ranked_bundle_dir):
    return load_bundle(ranked_bundle_dir)


def ranker_checkpoint(ranker_dir):
    from ff_jax.rank.evaluate import load_ranker
    from ff_jax.train.run import Run

    model, tokenizer, data = load_ranker(Run.open(ranker_dir))
    sources, fmt, _ = data.feed.open_dataset(data.feed.dataset)
    member, items, question = data.prompt_tokenizers(tokenizer, fmt)
    return model, data, sources, member, items, question


def test_ranker_steps_give_the_checkpoint_scores_and_prompts_are_rankerdatas(ranker_dir, loaded):
    """Members scored together (one prefill, rows of several members in each score call) get the
    scores each gets alone from the checkpoint: its candidates extending its own cache (<= 1e-5)."""
    from ff_jax.rank.cross_encoder import score_candidates

    model, data, sources, member, items, question = ranker_checkpoint(ranker_dir)
    prompts = RankerPrompts(ServingPrompts(loaded.prompts, loaded.tokenizer), loaded.ranker["document"])
    catalogue = loaded.catalogue["prompt"].tolist()
    candidates = [prompts.candidate(p) for p in catalogue[:20]]
    assert candidates == [list(ids) + list(question) for ids in items.items(catalogue[:20])]
    ranker = ServedRanker(loaded.ranker["functions"], loaded.ranker["weights"], loaded.ranker["document"], batch=8)
    assert (ranker.per_row, ranker.rows) == (4, 2)  # 8 candidates a call: rows mix members
    budget = data.ranker.candidate_budget
    test = sources["test"]
    contexts = [list(prompts.context.member(test[i])) for i in range(3)]
    assert contexts == [list(member.member(test[i])) for i in range(3)] and len({len(c) for c in contexts}) > 1
    own = [candidates, candidates[3:10], candidates[::-1][:13]]  # 20, 7 and 13 candidates: rows part-filled
    got = ranker.score(ranker.start(contexts, 4, data.context_budget), own)  # 4: a filler member row
    for context, cands, scores in zip(contexts, own, got):
        cached = score_candidates(model, context, cands, budget, mode="cache", max_context=data.context_budget)
        np.testing.assert_allclose(scores, cached, atol=1e-5)
        naive = score_candidates(model, context, cands, budget, mode="naive")
        np.testing.assert_allclose(scores, naive, atol=1e-4)
        assert np.ptp(scores) > 1e-3  # the candidates really differ
    # One member alone, in a wider cache (another served width), gives the same scores.
    alone = ranker.score(ranker.start(contexts[1:2], 1, data.context_budget + 64), own[1:2])[0]
    np.testing.assert_allclose(alone, got[1], atol=1e-5)


def test_the_server_returns_retrieval_top_k_in_ranker_order(ranked_bundle_dir, ranker_dir, tmp_path, bundle_dir):
    import dataclasses

    body = {"member": {"profile": {"headline": "coder number 5"}, "history": [{"item_id": "p03"}, {"item_id": "p11"}]},
            "k": 9}
    plain = start(bundle_dir, tmp_path / "plain")
    ranked = start(ranked_bundle_dir, tmp_path / "ranked")
    sequential = start(ranked_bundle_dir, tmp_path / "sequential", dataclasses.replace(CONFIG, overlap_prefill=False))
    try:
        retrieved = plain.post("/v1/recommend", json=body).json()["items"]
        answer = ranked.post("/v1/recommend", json=body).json()["items"]
        assert sorted(i["item_id"] for i in answer) == sorted(i["item_id"] for i in retrieved)
        scores = [i["ranker_score"] for i in answer]
        assert scores == sorted(scores, reverse=True) and None not in scores
        by_id = {i["item_id"]: i["retrieval_score"] for i in retrieved}
        np.testing.assert_allclose([i["retrieval_score"] for i in answer], [by_id[i["item_id"]] for i in answer],
                                   atol=1e-6)
        assert [i["item_id"] for i in answer] != [i["item_id"] for i in retrieved]  # the ranker reorders
        assert sequential.post("/v1/recommend", json=body).json()["items"] == answer
        # The scores are the checkpoint's for this member's context and these candidates.
        from ff_jax.rank.cross_encoder import score_candidates

        model, data, _, _, _, _ = ranker_checkpoint(ranker_dir)
        engine = ranked.app.state.engine
        record = engine.prompts.member_record(body["member"]["profile"],
                                              [HistoryItem(item_id=h["item_id"]) for h in body["member"]["history"]],
                                              engine.prompt_of)
        context = list(engine.ranker_prompts.context.member(record))
        expected = score_candidates(model, context, [engine._candidate(i["item_id"]) for i in answer],
                                    data.ranker.candidate_budget, mode="naive")
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        shapes = engine.shapes()
        assert {("ranker", b, n) for b in (1, 2, 4) for n in (128, 192)} <= set(shapes)
    finally:
        for client in (plain, ranked, sequential):
            client.__exit__(None, None, None)


def test_a_micro_batch_is_ranked_by_one_prefill_and_each_member_gets_its_own_answer(ranked_bundle_dir, tmp_path):
    """The ranker sees the batch: one prefill call for all members, and every member's ranking and
    scores are those it gets when it comes alone (<= 1e-5)."""
    from ff_jax.serving.engine import Engine, Query

    engine = Engine(ranked_bundle_dir, tmp_path, CONFIG)  # not warmed up: shapes compile on first use
    members = [({"headline": "coder number 5"}, ["p03", "p11"], 9), ({"headline": "cook number 2"}, ["p04"], 5),
               ({}, ["p10", "p12", "p14", "p16"], 3)]
    queries = []
    for profile, history, k in members:
        record = engine.prompts.member_record(profile, [HistoryItem(item_id=h) for h in history], engine.prompt_of)
        queries.append(Query(engine.prompts.tokens.member(record), k, [], [], engine.ranker_prompts.context.member(record)))
    calls = []
    prefill = engine.ranker.steps["prefill"]
    engine.ranker.steps["prefill"] = lambda weights, tokens, segments: calls.append(tokens.shape) or prefill(
        weights, tokens, segments)
    together = engine.recommend(queries)
    assert len(calls) == 1 and calls[0][0] == 4  # three members and a filler row, one call
    for query, answer in zip(queries, together):
        alone = engine.recommend([query])[0]
        assert [a[0] for a in answer] == [a[0] for a in alone] and len(answer) == query.k
        np.testing.assert_allclose([a[2] for a in answer], [a[2] for a in alone], atol=1e-5)
        np.testing.assert_allclose([a[1] for a in answer], [a[1] for a in alone], atol=1e-5)
    assert len(calls) == 4
    engine.close()


def test_the_served_order_fuses_ranker_and_retrieval_scores_by_the_bundles_weight(ranked_bundle_dir, tmp_path):
    """ranker + w x retrieval: w = 0 is the ranker's order, a huge w the retriever's, and a middle
    w the fused sum sorted by hand; the scores returned stay the two raw ones."""
    from ff_jax.serving.engine import Engine, Query

    engine = Engine(ranked_bundle_dir, tmp_path, CONFIG)
    assert engine.retrieval_weight == 0.0  # the ranker run had no rerank report
    record = engine.prompts.member_record({"headline": "coder number 5"}, [HistoryItem(item_id="p03")],
                                          engine.prompt_of)
    query = Query(engine.prompts.tokens.member(record), 9, [], [], engine.ranker_prompts.context.member(record))
    alone = engine.recommend([query])[0]
    assert [a[2] for a in alone] == sorted((a[2] for a in alone), reverse=True)
    retrieval, ranker = np.array([a[1] for a in alone]), np.array([a[2] for a in alone])
    engine.retrieval_weight = 1e6
    assert [a[0] for a in engine.recommend([query])[0]] == [alone[i][0] for i in np.argsort(-retrieval, kind="stable")]
    weight = float(np.ptp(ranker) / max(np.ptp(retrieval), 1e-6))  # both terms matter
    engine.retrieval_weight = weight
    fused = engine.recommend([query])[0]
    assert [a[0] for a in fused] == [alone[i][0] for i in np.argsort(-(ranker + weight * retrieval), kind="stable")]
    np.testing.assert_allclose(sorted(a[2] for a in fused), sorted(ranker), atol=1e-6)
    engine.close()


def test_the_served_weight_is_given_else_the_last_rerank_evaluations_else_zero(tmp_path):
    from ff_jax.serving.ranker import served_retrieval_weight

    assert served_retrieval_weight(tmp_path, None) == 0.0
    assert served_retrieval_weight(tmp_path, None, trained=5.0) == 5.0  # RankerData.retrieval_prior
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "rerank_test.json").write_text(json.dumps({"retrieval_weight": 30.0}))
    assert served_retrieval_weight(tmp_path, None) == 30.0
    assert served_retrieval_weight(tmp_path, 2.5) == 2.5
    with pytest.raises(ValueError, match="finite number, got nan"):
        served_retrieval_weight(tmp_path, float("nan"))


@pytest.mark.parametrize("name", [layout.ranker_file("prefill"), layout.ranker_file("score"), layout.RANKER_WEIGHTS,
                                  layout.RANKER])
def test_tampered_ranker_files_are_refused(ranked_bundle_dir, tmp_path, name):
    copy = tmp_path / "bundle"
    shutil.copytree(ranked_bundle_dir, copy)
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 3] ^= 0x10
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{copy / name}: checksum mismatch"):
        load_bundle(copy)
    (copy / name).unlink()
    with pytest.raises(BundleError, match="listed in the manifest but missing"):
        load_bundle(copy)


def test_manifest_records_the_ranker(ranked_bundle_dir, ranker_dir):
    manifest = json.loads((ranked_bundle_dir / "manifest.json").read_text())
    ranker = manifest["model"]["ranker"]
    assert ranker["head"] == "linear" and ranker["origin"]["step"] == 3 and ranker["retrieval_weight"] == 0.0
    assert ranker["origin"]["workdir"] == str(ranker_dir.absolute())
    assert {w["name"] for w in manifest["ranker_weights"]} >= {"kernel", "bias"}


def test_a_format_1_ranker_bundle_is_refused(ranked_bundle_dir, tmp_path):
    """Format 1 scored one member at a time with other step signatures: export again, it says."""
    copy = tmp_path / "bundle"
    shutil.copytree(ranked_bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["version"] == layout.VERSION == 3
    (copy / "manifest.json").write_text(json.dumps(sealed({**manifest, "version": 1})))  # as format 1 wrote it
    with pytest.raises(BundleError, match=f"{copy / 'manifest.json'}: bundle format 1 holds ranker steps.*export it again"):
        load_bundle(copy)
