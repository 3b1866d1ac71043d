"""What the server recommends to a test member is what `ff-jax embed` gives for the same trained
run: exact kNN by dot product of the member's stored vector with every stored item vector, the
member's engaged history left out (the evaluation protocol's exclusion, sent as `exclude_items`,
which is how the server excludes). Ties the exported towers, the server's prompt assembly and its
retrieval to the offline path the metrics are computed on."""

import numpy as np
import pytest

from ff_jax.serving.prompting import HistoryItem

from .conftest import TEMPLATE, tables
from .test_server import CONFIG, start

OUTPUT = "served_parity_embeddings"  # a folder of its own under the run's workdir
K = 10


@pytest.fixture(scope="module")
def embedded(run_dir):
    """(test members, their stored prompt records, member vectors by id, item ids, item vectors)."""
    from ff_jax import cli
    from ff_jax.retrieval.embedding_store import read_tower
    from ff_jax.retrieval.eval_data import feed_eval_data
    from ff_jax.train.run import Run

    assert cli.main(["embed", f"--workdir={run_dir}", f"--gin.EmbedConfig.output='{OUTPUT}'"]) == 0
    run = Run.open(run_dir)
    data = run.spec.data
    _, members = feed_eval_data(data, "test")
    records = {r["user_id"]: dict(r) for r in data.open_dataset(data.dataset)[0]["test"]}
    member_ids, member_vectors = read_tower(run.layout.members("test", OUTPUT))
    item_ids, item_vectors = read_tower(run.layout.items(OUTPUT))
    return (members, records, dict(zip(member_ids.tolist(), member_vectors.astype(np.float64))), item_ids.tolist(),
            item_vectors.astype(np.float64))


@pytest.fixture(scope="module")
def client(bundle_dir, tmp_path_factory):
    client = start(bundle_dir, tmp_path_factory.mktemp("parity_state"))
    yield client
    client.__exit__(None, None, None)


def request_of(member):
    """The member as a client would send it: profile from the users table, the newest engaged
    items the prompt holds (newest first), every engaged item excluded."""
    users = tables().users.set_index("user_id")
    profile = {"headline": users.loc[member.user_id, "headline"], "age": float(users.loc[member.user_id, "age"])}
    history = member.engaged_history[::-1][: TEMPLATE.max_history_items]
    return {"member": {"profile": profile, "history": [{"item_id": i} for i in history]}, "k": K,
            "exclude_items": list(dict.fromkeys(member.engaged_history))}


def test_served_recommendations_are_the_knn_of_the_embed_jobs_vectors(client, embedded):
    members, records, member_vector, item_ids, item_vectors = embedded
    engine = client.app.state.engine
    assert sorted(item_ids) == sorted(engine.prompt_of)  # the same corpus, no fresh items
    checked = 0
    for member in members:
        if member.user_id not in member_vector:
            continue
        body = request_of(member)
        # The request describes the member exactly as the embedded prompt did.
        history = [HistoryItem(item_id=h["item_id"]) for h in body["member"]["history"]]
        record = engine.prompts.member_record(body["member"]["profile"], history, engine.prompt_of)
        assert record == {key: records[member.user_id][key] for key in record}, member.user_id
        scores = item_vectors @ member_vector[member.user_id]
        left_out = set(body["exclude_items"])
        expected = [j for j in np.argsort(-scores, kind="stable") if item_ids[j] not in left_out][:K]
        answer = client.post("/v1/recommend", json=body)
        assert answer.status_code == 200, answer.json()
        served = answer.json()["items"]
        assert [i["item_id"] for i in served] == [item_ids[j] for j in expected], member.user_id
        np.testing.assert_allclose([i["retrieval_score"] for i in served], scores[expected], atol=1e-4)
        checked += 1
    assert checked >= 10, f"only {checked} test members have a stored vector"
