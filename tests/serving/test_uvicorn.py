"""`ff-jax serve` as a real uvicorn process on loopback: schema fuzzing over HTTP finds no 5xx, and
after `kill -9` right behind acknowledged /v1/items calls a restarted server serves every one."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from .test_server import TOKEN, fuzz
from .waiting import wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None, token=None):
    """(status, JSON body) of a GET (body None) or POST."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json",
                                              **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def start_server(bundle_dir, state_dir, port):
    """`ff-jax serve` in a subprocess, returned once /readyz says ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ff_jax.cli", "serve", f"--bundle={bundle_dir}", f"--workdir={state_dir}",
         f"--port={port}", "--gin.ServerConfig.max_batch=4", "--gin.ServerConfig.length_buckets=(128,)",
         "--gin.ServerConfig.max_k=100"],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "FF_JAX_SERVE_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-3000:]}")
        try:
            return call(f"{url}/readyz")[0] == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(ready, f"{url}/readyz 200", every_s=0.1)
    except AssertionError:
        process.kill()  # a server that never became ready outlives no test
        raise
    return process, url


def test_acknowledged_items_survive_kill_9(bundle_dir, tmp_path):
    state, port = tmp_path / "state", free_port()
    process, url = start_server(bundle_dir, state, port)
    acknowledged = []
    try:
        for n in range(5):
            batch = [{"item_id": f"k{n}_{i}", "fields": {"text": f"killed soup {n} {i}", "topic": "food"}}
                     for i in range(1 + n % 3)]
            status, answer = call(f"{url}/v1/items", {"items": batch}, TOKEN)
            assert status == 200, answer
            acknowledged += [item["item_id"] for item in batch]
        assert call(f"{url}/v1/items", {"items": [{"item_id": "nope", "fields": {"text": "x"}}]})[0] == 401
    finally:
        process.send_signal(signal.SIGKILL)  # right behind the last acknowledgement: no shutdown
        process.wait()
    process, url = start_server(bundle_dir, state, port)
    try:
        status, ready = call(f"{url}/readyz")
        assert ready["index_size"] == 40 + len(acknowledged)
        status, answer = call(f"{url}/v1/recommend", {"member": {}, "k": 40 + len(acknowledged)})
        assert status == 200
        served = {item["item_id"] for item in answer["items"]}
        assert set(acknowledged) <= served and "nope" not in served
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()


def test_schema_fuzzing_over_http_finds_no_server_error(bundle_dir, tmp_path):
    import schemathesis

    process, url = start_server(bundle_dir, tmp_path / "state", free_port())
    try:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        fuzz(schema, {"authorization": f"Bearer {TOKEN}"}, examples=25)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
    assert process.returncode in (0, -signal.SIGTERM)
