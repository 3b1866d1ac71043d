"""The server in-process (FastAPI's TestClient): recommendations equal a numpy ranking of the bundle's
own embeddings, exclusions and blocked authors hold, fresh items are served at once and need the
bearer token, every malformed request is a 4xx naming its field, schema fuzzing finds no 5xx, the
micro-batcher batches and keeps each answer with its request, and the items log survives a torn
last line."""

import asyncio
import concurrent.futures
import json
from pathlib import Path

import numpy as np
import pytest

from ff_jax.serving.api import ServerConfig
from ff_jax.serving.batching import MicroBatcher
from ff_jax.serving.items_log import ItemLog, ItemLogError
from ff_jax.serving.prompting import HistoryItem, padded

from .waiting import wait_until

TOKEN = "test-token-1234"
CONFIG = ServerConfig(max_batch=4, max_queue_delay_ms=5.0, max_k=64, max_history=8, max_body_bytes=20_000,
                      length_buckets=(128,), max_items_per_request=8)
AUTH = {"authorization": f"Bearer {TOKEN}"}


def start(bundle_dir, state_dir, config=CONFIG):
    from fastapi.testclient import TestClient

    from ff_jax.serving.server import create_app

    client = TestClient(create_app(bundle_dir, state_dir, config))
    client.__enter__()
    wait_until(lambda: client.get("/readyz").status_code == 200, "ready",  # warm-up compiles 9 shapes
               lambda: client.get("/readyz").json())
    return client


@pytest.fixture(scope="module")
def client(bundle_dir, tmp_path_factory):
    client = start(bundle_dir, tmp_path_factory.mktemp("state"))
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def engine(client):
    return client.app.state.engine


def embed(engine, tower, token_ids):
    """Unit vectors float64 of `token_ids` through the bundle's exported tower (unpadded batch)."""
    tokens, segments = padded(token_ids, max(map(len, token_ids)), engine.bundle.tokenizer.pad_id)
    return engine.bundle.embed(tower, tokens, segments).astype(np.float64)


def member_vector(engine, profile, history):
    """`history`: catalogue ids, or HistoryItems (newest first)."""
    history = [h if isinstance(h, HistoryItem) else HistoryItem(item_id=h) for h in history]
    return embed(engine, "member", [engine.prompts.member_token_ids(profile, history, engine.prompt_of)])[0]


def numpy_ranking(engine, profile, history, k, exclude=()):
    """The top-k by cosine, computed here from the bundle's towers on every item served (the
    catalogue and the fresh items)."""
    ids = list(engine.prompt_of)
    items = embed(engine, "item", engine.prompts.item_token_ids([engine.prompt_of[i] for i in ids]))
    scores = items @ member_vector(engine, profile, history)
    order = [j for j in np.argsort(-scores, kind="stable") if ids[j] not in set(exclude)][:k]
    return [ids[j] for j in order], scores[order]


def stored_catalogue(engine):
    """(ids, vectors) of the catalogue as the bundle's index stored them at export (not recomputed)."""
    from ff_jax.retrieval import load_index

    root = engine.bundle.path / "index"
    return [str(i) for i in load_index(root).ids], np.load(root / "corpus.npy").astype(np.float64)


def test_recommendations_are_the_numpy_ranking_of_the_bundles_embeddings(client, engine):
    profile, history = {"headline": "cook number 3", "age": 33}, ["p04", "p10", "p02"]
    body = {"member": {"profile": profile, "history": [{"item_id": h} for h in history]}, "k": 7}
    got = client.post("/v1/recommend", json=body)
    assert got.status_code == 200, got.json()
    items = got.json()["items"]
    expected_ids, expected_scores = numpy_ranking(engine, profile, history, 7)
    assert [i["item_id"] for i in items] == expected_ids
    np.testing.assert_allclose([i["retrieval_score"] for i in items], expected_scores, atol=1e-5)
    assert all(i["ranker_score"] is None for i in items)  # no ranker in this bundle
    excluded = client.post("/v1/recommend", json={**body, "exclude_items": expected_ids[:3]}).json()["items"]
    expected_ids, _ = numpy_ranking(engine, profile, history, 7, exclude=expected_ids[:3])
    assert [i["item_id"] for i in excluded] == expected_ids


def test_blocked_authors_filter_catalogue_items(client, engine):
    """The catalogue's authors (exported from the corpus) are filtered: blocking the author of the
    top recommendation gives the numpy ranking without any of that author's items."""
    from .conftest import tables

    author_of = dict(zip(tables().items["item_id"], tables().items["author"]))
    profile, history = {"headline": "coder number 4"}, ["p05", "p13"]
    body = {"member": {"profile": profile, "history": [{"item_id": h} for h in history]}, "k": 8}
    plain = client.post("/v1/recommend", json=body).json()["items"]
    assert [i["author"] for i in plain] == [author_of[i["item_id"]] for i in plain]
    top_author = plain[0]["author"]
    blocked = client.post("/v1/recommend", json={**body, "blocked_authors": [top_author]}).json()["items"]
    ranking, _ = numpy_ranking(engine, profile, history, 40)
    assert [i["item_id"] for i in blocked] == [j for j in ranking if author_of[j] != top_author][:8]
    assert top_author not in {i["author"] for i in blocked}


def test_history_as_text_or_fields_is_the_catalogue_items_prompt(client):
    """A recent item given by its fields ranks exactly as the same item given by catalogue id."""
    from .conftest import tables

    row = tables().items.set_index("item_id").loc["p07"]
    fields = {"topic": row["topic"], "likes": float(row["likes"]), "author": row["author"], "text": row["text"]}
    by_id = client.post("/v1/recommend", json={"member": {"history": [{"item_id": "p07"}]}, "k": 5}).json()
    by_fields = client.post("/v1/recommend", json={"member": {"history": [{"fields": fields}]}, "k": 5}).json()
    assert by_id == by_fields
    by_text = client.post("/v1/recommend", json={"member": {"history": [{"text": row["text"]}]}, "k": 5})
    assert by_text.status_code == 200 and by_text.json() != by_id  # topic and likes are missing from it


def test_fresh_items_are_served_at_once_and_blocked_authors_hold(client, engine, monkeypatch):
    """Fresh items are served in the exact numpy ranking over the bundle's stored catalogue vectors
    and the fresh items' own vectors, with k the fewest that hold all of them (below the catalogue
    size, so none is there by default); blocking their author gives that ranking without them."""
    from .conftest import tables

    monkeypatch.setenv(CONFIG.token_env, TOKEN)
    ids, vectors = stored_catalogue(engine)
    before = engine.index.count
    assert before == len(ids)  # no fresh item yet (this test adds the first ones)
    fresh = [{"item_id": f"new{i}", "fields": {"topic": "food", "text": f"fresh soup recipe {i}", "likes": 3},
              "author": "chef"} for i in range(3)]
    answer = client.post("/v1/items", json={"items": fresh}, headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"added": 3, "index_size": before + 3}
    fresh_prompts = engine.prompts.item_prompts([f["fields"] for f in fresh])
    ids += [f["item_id"] for f in fresh]
    vectors = np.concatenate([vectors, embed(engine, "item", engine.prompts.item_token_ids(fresh_prompts))])
    author_of = {**dict(zip(tables().items["item_id"], tables().items["author"])), "new0": "chef", "new1": "chef",
                 "new2": "chef"}
    scores = vectors @ member_vector(engine, {}, [])
    order = list(np.argsort(-scores, kind="stable"))
    k = 1 + max(order.index(ids.index(f["item_id"])) for f in fresh)  # the fewest that hold every fresh item
    assert k < before, "the fresh items rank last: pick another member so that k stays below the catalogue"
    served = client.post("/v1/recommend", json={"member": {}, "k": k}).json()["items"]
    assert [i["item_id"] for i in served] == [ids[j] for j in order[:k]]
    np.testing.assert_allclose([i["retrieval_score"] for i in served], scores[order[:k]], atol=1e-5)
    assert [i["author"] for i in served] == [author_of[i["item_id"]] for i in served]
    blocked = client.post("/v1/recommend", json={"member": {}, "k": k, "blocked_authors": ["chef"]}).json()["items"]
    assert [i["item_id"] for i in blocked] == [ids[j] for j in order if author_of[ids[j]] != "chef"][:k]
    again = client.post("/v1/items", json={"items": fresh[:1]}, headers=AUTH)
    assert again.status_code == 409 and again.json()["detail"][0]["field"] == "items[0].item_id"
    twice = client.post("/v1/items", json={"items": [fresh[0] | {"item_id": "x"}, fresh[1] | {"item_id": "x"}]},
                        headers=AUTH)
    assert twice.status_code == 409 and twice.json()["detail"][0]["field"] == "items[1].item_id"
    assert engine.index.count == before + 3
    # Only the main text may be cut to the item budget: fields before it that overrun it are refused.
    long = client.post("/v1/items", json={"items": [{"item_id": "long", "fields": {"topic": "x" * 3000, "text": "t"}}]},
                       headers=AUTH)
    assert long.status_code == 422 and long.json()["detail"][0]["field"] == "items[0].fields", long.json()
    assert engine.index.count == before + 3
    log = [json.loads(line) for line in engine.log.path.read_text().splitlines()]
    assert [r["item_id"] for r in log] == ["new0", "new1", "new2"]


def test_replicas_sharing_the_items_log_serve_each_others_fresh_items(client, engine, monkeypatch):
    """A second server on the same state folder (a replica): what one acknowledges, the other
    serves at its next request, and an id taken on one is refused on the other."""
    monkeypatch.setenv(CONFIG.token_env, TOKEN)
    replica = start(engine.bundle.path, engine.log.path.parent)
    try:
        item = {"item_id": "shared1", "fields": {"text": "shared stew", "topic": "food"}, "author": "cook2"}
        assert client.post("/v1/items", json={"items": [item]}, headers=AUTH).status_code == 200
        count = engine.index.count
        served = replica.post("/v1/recommend", json={"member": {}, "k": count}).json()["items"]
        assert "shared1" in {i["item_id"] for i in served}
        assert {i["author"] for i in served if i["item_id"] == "shared1"} == {"cook2"}
        again = replica.post("/v1/items", json={"items": [item]}, headers=AUTH)
        assert again.status_code == 409 and again.json()["detail"][0]["field"] == "items[0].item_id"
        other = {"item_id": "shared2", "fields": {"text": "from the replica"}}
        assert replica.post("/v1/items", json={"items": [other]}, headers=AUTH).json()["index_size"] == count + 1
        served = client.post("/v1/recommend", json={"member": {}, "k": count + 1}).json()["items"]
        assert "shared2" in {i["item_id"] for i in served}
    finally:
        replica.__exit__(None, None, None)


def test_writes_need_the_bearer_token(client, monkeypatch):
    body = {"items": [{"item_id": "tok1", "fields": {"text": "x"}}]}
    monkeypatch.delenv(CONFIG.token_env, raising=False)
    disabled = client.post("/v1/items", json=body, headers=AUTH)
    assert disabled.status_code == 403 and CONFIG.token_env in disabled.json()["detail"][0]["message"]
    monkeypatch.setenv(CONFIG.token_env, TOKEN)
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        refused = client.post("/v1/items", json=body, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    # The token is a dependency, checked before the body: a caller without it learns nothing of the schema.
    unchecked = client.post("/v1/items", json={"items": []}, headers={"authorization": "Bearer wrong"})
    assert unchecked.status_code == 401 and unchecked.json()["detail"][0]["field"] == "authorization"
    assert client.post("/v1/items", json=body, headers=AUTH).status_code == 200


def post_raw(client, path, content, **headers):
    return client.post(path, content=content, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize("content, status, field", [
    (b'{"member": ', 422, "body"),  # malformed JSON
    (b'{"member": {}, "k": 10', 422, "body"),
    (b'[1, 2]', 422, "body"),
    (b'{"member": {"profile": {"age": NaN}}}', 422, "member.profile.age"),
    (b'{"member": {"profile": {"age": Infinity}}}', 422, "member.profile.age"),
    (b'{"member": {"profile": {"nosuch": "x"}}}', 422, "member.profile.nosuch"),
    (b'{"member": {"profile": {"headline": {"a": 1}}}}', 422, "member.profile.headline"),
    (b'{"member": {"history": [{"item_id": "p99"}]}}', 422, "member.history[0].item_id"),
    (b'{"member": {"history": [{"item_id": "p01", "text": "x"}]}}', 422, "member.history[0]"),
    (b'{"member": {"history": [{"text": "a\\ud800b"}]}}', 422, "member.history[0].text"),
    (b'{"member": {"history": [{"text": "nul \\u0000 here"}]}}', 422, "member.history[0].text"),
    (b'{"member": {"profile": {"headline": "\\udfff"}}}', 422, "member.profile.headline"),
    (b'{"member": {"history": [{"fields": {"likes": "many", "text": "x"}}]}}', 422, "member.history[0].fields.likes"),
    (b'{"member": {}, "k": 0}', 422, "k"),
    (b'{"member": {}, "k": 65}', 422, "k"),  # over ServerConfig.max_k
    (b'{"member": {}, "k": 50}', 422, "k"),  # within max_k, beyond the catalogue
    (b'{"member": {}, "k": "ten"}', 422, "k"),
    (b'{"member": {}, "exclude_items": ["p01", "zzz"]}', 422, "exclude_items[1]"),
    (b'{"member": {}, "surprise": 1}', 422, "surprise"),
    (b'{}', 422, "member"),
    (json.dumps({"member": {"history": [{"item_id": "p01"}] * 9}}).encode(), 422, "member.history"),
    (json.dumps({"member": {"history": [{"text": "x" * 4001}]}}).encode(), 422, "member.history[0].text"),
    (json.dumps({"member": {"profile": {"headline": "é" * 30_000}}}).encode(), 413, "body"),  # huge body
])
def test_bad_requests_are_4xx_naming_the_field(client, content, status, field):
    answer = post_raw(client, "/v1/recommend", content)
    assert answer.status_code == status, answer.json()
    assert field in [d["field"] for d in answer.json()["detail"]], answer.json()


def test_odd_but_valid_unicode_is_served(client, engine):
    """Served as the numpy ranking of the same text: nothing is dropped or mangled on the way."""
    for text in ("emoji 🍲 and ﷽", "zero\u200bwidth", "RTL \u202e text", "combining e\u0301", "tab\tand\nnewline"):
        answer = client.post("/v1/recommend", json={"member": {"profile": {"headline": text},
                                                               "history": [{"text": text}]}, "k": 3})
        assert answer.status_code == 200, (text, answer.json())
        expected, scores = numpy_ranking(engine, {"headline": text}, [HistoryItem(fields={"text": text})], 3)
        assert [i["item_id"] for i in answer.json()["items"]] == expected, text
        np.testing.assert_allclose([i["retrieval_score"] for i in answer.json()["items"]], scores, atol=1e-5)


def test_a_chunked_huge_body_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b" " * 1000
        yield b'{"member": {}}'

    answer = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"][0]["field"] == "body"


def test_health_readiness_and_metrics(client, engine):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    # Batch 1, 2, 4 times length bucket 128 and budget 192 (members) or budget 96 alone (items).
    assert sorted(engine.shapes()) == sorted([("member", b, n) for b in (1, 2, 4) for n in (128, 192)]
                                             + [("item", b, 96) for b in (1, 2, 4)])
    assert ready["status"] == "ready" and ready["shapes"] == 9
    engine.ready = False  # the gate: nothing is served while warming up
    try:
        assert client.get("/readyz").status_code == 503
        assert client.post("/v1/recommend", json={"member": {}}).status_code == 503
    finally:
        engine.ready = True
    before = scrape(client)
    for k in (1, 2, 3):
        assert client.post("/v1/recommend", json={"member": {}, "k": k}).status_code == 200
    assert client.post("/v1/recommend", json={"member": {}, "k": 0}).status_code == 422
    after = scrape(client)
    moved = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    recommend = (("endpoint", "/v1/recommend"),)
    assert moved[("ff_jax_requests_total", recommend + (("status", "200"),))] == 3
    assert moved[("ff_jax_requests_total", recommend + (("status", "422"),))] == 1
    assert moved[("ff_jax_errors_total", recommend + (("kind", "422"),))] == 1
    assert moved[("ff_jax_request_seconds_count", recommend)] == 4
    assert moved[("ff_jax_requests_total", (("endpoint", "/metrics"), ("status", "200")))] == 1  # the first scrape
    assert moved[("ff_jax_queue_seconds_count", ())] == 3  # the refused one never queued
    assert moved[("ff_jax_batch_size_sum", ())] == 3  # batches of any size, 3 requests in all
    batches = moved[("ff_jax_batch_size_count", ())]
    assert 1 <= batches <= 3 and moved[("ff_jax_compute_seconds_count", (("stage", "member_tower"),))] == batches
    assert after[("ff_jax_index_size", ())] == engine.index.count
    assert not [key for key, change in moved.items() if key[0] == "ff_jax_errors_total" and change and
                key != ("ff_jax_errors_total", recommend + (("kind", "422"),))]


def scrape(client) -> dict:
    """/metrics as {(sample name, sorted labels): value}, read with prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = client.get("/metrics")
    assert answer.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def test_openapi_bounds_every_field(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    request = schema["RecommendRequest"]["properties"]
    assert request["k"]["maximum"] == CONFIG.max_k and request["k"]["minimum"] == 1
    assert request["exclude_items"]["maxItems"] == CONFIG.max_exclude
    assert schema["Member"]["properties"]["history"]["maxItems"] == CONFIG.max_history
    assert schema["ItemsRequest"]["properties"]["items"]["maxItems"] == CONFIG.max_items_per_request


def fuzz(schema, headers, examples=40):
    """Every operation of `schema` with generated requests (valid and not): none may get a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            case.validate_response(case.call(headers=headers), checks=[not_a_server_error])

        check()


def test_schema_fuzzing_finds_no_server_error(bundle_dir, tmp_path, monkeypatch):
    import schemathesis
    from schemathesis.python import asgi

    from ff_jax.serving.server import create_app

    monkeypatch.setenv(CONFIG.token_env, TOKEN)
    app = create_app(bundle_dir, tmp_path, CONFIG)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # runs the app's lifespan: warm-up starts
    with asgi.get_client(app) as probe:
        wait_until(lambda: probe.get("/readyz").status_code == 200, "ready", lambda: probe.get("/readyz").json())
    fuzz(schema, AUTH)
    fuzz(schema, {})  # without the token too


# ----------------------------------------------------------------------------- pieces


def test_the_micro_batcher_batches_and_keeps_answers_with_their_requests():
    seen = []

    def process(items):
        seen.append(list(items))
        return [ValueError(f"bad {i}") if i == 6 else i * 10 for i in items]

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(process, max_batch=4, max_delay=0.05, executor=executor)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(i) for i in range(10)), return_exceptions=True)
            await batcher.stop()
        return results

    results = asyncio.run(main())
    assert [len(b) for b in seen] == [4, 4, 2] and sorted(sum(seen, [])) == list(range(10))
    assert [r if not isinstance(r, Exception) else str(r) for r in results] == \
        [0, 10, 20, 30, 40, 50, "bad 6", 70, 80, 90]


def test_the_items_log_drops_a_torn_tail_and_refuses_corruption(tmp_path):
    log = ItemLog(tmp_path / "items.jsonl")
    log.append([{"item_id": "a", "prompt": "<item>a</item>"}, {"item_id": "b", "prompt": "<item>b</item>"}])
    log.close()
    with open(log.path, "ab") as f:
        f.write(b'{"item_id": "c", "pro')  # a crash mid-write: never acknowledged
    assert [r["item_id"] for r in ItemLog(log.path).replay()] == ["a", "b"]
    assert log.path.read_bytes().endswith(b"}\n")  # the torn tail is gone
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"#" + lines[0][1:] + lines[1])  # a flipped byte in an acknowledged line
    with pytest.raises(ItemLogError, match=r"items.jsonl:1: not a JSON record"):
        ItemLog(log.path).replay()


# ----------------------------------------------------------------------------- issue 26


@pytest.mark.parametrize("content, field", [
    (b'{"member": {}, "k": true}', "k"),  # was served as k=1
    (b'{"member": {}, "k": "5"}', "k"),  # was served as k=5
    (b'{"member": {}, "k": 5.0}', "k"),
    (b'{"member": {"history": [{"item_id": 7}]}}', "member.history[0].item_id"),
])
def test_request_types_are_strict(client, content, field):
    """Issue 26 row 7."""
    answer = post_raw(client, "/v1/recommend", content)
    assert answer.status_code == 422 and field in [d["field"] for d in answer.json()["detail"]], answer.json()


def test_a_body_nested_too_deeply_is_refused_naming_the_body(client):
    """Issue 26 row 7: 100,000 nested `[` were a 400 without a field list (here 15,000: CONFIG's body limit)."""
    answer = post_raw(client, "/v1/recommend", b"[" * 15_000)
    assert answer.status_code == 400
    assert answer.json() == {"detail": [{"field": "body", "message": "could not be parsed as JSON (nested too "
                                                                      "deeply, or unreadable)"}]}
    assert client.get("/no/such/path").json()["detail"][0]["field"] == "path"  # Starlette's other refusals too


def corrupt_items_log(path):
    """Three acknowledged records, the middle one's bytes damaged."""
    log = ItemLog(path)
    log.append([{"item_id": f"fresh{i}", "prompt": f"<item>fresh {i}</item>"} for i in range(3)])
    log.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"#" + lines[1][1:] + lines[2])


def serve_error(capsys, *argv):
    """`ff-jax serve ...` in this process: (exit status, stderr); refused before uvicorn starts."""
    from ff_jax import cli

    code = cli.main(["serve", *argv])
    return code, capsys.readouterr().err


def test_a_corrupt_items_log_stops_the_server_at_start_up_naming_the_line(bundle_dir, tmp_path, capsys):
    """Issue 26 row 4: was /healthz 200 and /readyz 503 forever, nothing on stderr."""
    corrupt_items_log(tmp_path / "state" / "items.jsonl")
    code, err = serve_error(capsys, f"--bundle={bundle_dir}", f"--workdir={tmp_path / 'state'}", "--port=0")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ff-jax serve: corrupt items log: {tmp_path / 'state' / 'items.jsonl'}:2: not a JSON "
                          "record"), err


def test_a_port_in_use_is_one_line_before_the_bundle_is_loaded(tmp_path, capsys):
    """Issue 26 row 8: was uvicorn's [Errno 98] and exit status 3."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve_error(capsys, f"--bundle={tmp_path / 'not_loaded_yet'}", f"--workdir={tmp_path}",
                                f"--port={port}")
    assert code == 2
    assert err == (f"ff-jax serve: port unavailable: 127.0.0.1:{port}: Address already in use (is another server "
                   "listening there? choose another --port)\n")


def test_serve_keeps_its_state_beside_the_bundle_by_default(bundle_dir, tmp_path, capsys, monkeypatch):
    """Issue 26 row 13: the default was workdirs/serve under the current directory (inside the repo
    when started from its root). Shown through the log it replays: a corrupt one there is named."""
    import shutil

    bundle = Path(shutil.copytree(bundle_dir, tmp_path / "bundles" / "b1"))
    corrupt_items_log(tmp_path / "bundles" / "b1.state" / "items.jsonl")
    monkeypatch.chdir(tmp_path / "bundles")
    code, err = serve_error(capsys, "--bundle=b1", "--port=0")
    assert code == 2 and f"{bundle.with_name('b1.state') / 'items.jsonl'}:2: not a JSON record" in err, err
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["b1", "b1.state"]  # no workdirs/ here
