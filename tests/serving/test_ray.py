"""The bundle as a Ray Serve deployment of two replicas on a local Ray instance: both answer, and a
fresh item acknowledged through the proxy is served by each of them."""

import os

import pytest

from .test_server import CONFIG, TOKEN
from .test_uvicorn import call, free_port
from .waiting import wait_until

pytestmark = pytest.mark.slow


def test_two_replicas_serve_the_bundle_and_each_others_fresh_items(bundle_dir, tmp_path, monkeypatch):
    import urllib.request

    import ray
    from ray import serve

    from ff_jax.serving.ray_serve import application

    monkeypatch.setenv(CONFIG.token_env, TOKEN)
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {
        CONFIG.token_env: TOKEN, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(bundle_dir, tmp_path / "state", CONFIG, replicas=2, cpus_per_replica=1),
                  route_prefix="/")  # returns once every replica is up; /readyz then waits for warm-up
        url = f"http://127.0.0.1:{port}"

        def served_by(path, body=None):
            request = urllib.request.Request(f"{url}{path}", data=None if body is None else __import__("json").dumps(
                body).encode(), headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, response.headers["x-served-by"], __import__("json").loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, err.headers["x-served-by"], None

        ready = set()

        def both_ready() -> bool:
            status, replica, _ = served_by("/readyz")
            if status == 200:
                ready.add(replica)
            return len(ready) == 2

        wait_until(both_ready, "two ready replicas", lambda: f"ready: {ready}")
        item = {"item_id": "ray1", "fields": {"text": "soup served twice", "topic": "food"}}
        status, answer = call(f"{url}/v1/items", {"items": [item]}, TOKEN)
        assert status == 200 and answer["index_size"] == 41
        answered = set()
        for _ in range(200):
            status, replica, answer = served_by("/v1/recommend", {"member": {}, "k": 41})
            assert status == 200 and "ray1" in {i["item_id"] for i in answer["items"]}, replica
            answered.add(replica)
            if len(answered) == 2:
                break
        assert answered == ready
    finally:
        serve.shutdown()
        ray.shutdown()
