"""The OpenAPI schema the server publishes is the one it published before it was split into
routers (issue 28): openapi_golden.json was dumped from the single-closure `create_app` of commit
deda95f for the default ServerConfig and for test_server's CONFIG, the bundle's creation time (the
schema's version) masked."""

import json
from pathlib import Path

import pytest

from ff_jax.serving.api import ServerConfig

from .test_server import CONFIG

GOLDEN = Path(__file__).with_name("openapi_golden.json")


@pytest.mark.parametrize("name, config", [("default", ServerConfig()), ("test", CONFIG)])
def test_the_schema_is_the_one_published_before_the_routers(bundle_dir, tmp_path, name, config):
    from ff_jax.serving.server import create_app

    app = create_app(bundle_dir, tmp_path, config)
    schema = json.loads(json.dumps(app.openapi()))
    assert schema["info"]["version"] == app.state.engine.bundle.manifest["created"]
    schema["info"]["version"] = "<manifest created>"
    assert schema == json.loads(GOLDEN.read_text())[name]
