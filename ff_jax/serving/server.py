"""`ff-jax serve --bundle=DIR`: the bundle behind FastAPI + uvicorn.

    POST /v1/recommend   member (profile, recent items) + k + exclusions -> top-k items
    POST /v1/items       fresh items -> embedded, logged (fsync), indexed; bearer token required
    GET  /healthz        the process answers
    GET  /readyz         200 once every served shape is compiled and the items log replayed
    GET  /metrics        Prometheus text (ff_jax.serving.metrics)

`create_app` only wires the parts: one router per resource (ff_jax.serving.routes), the request
models of ff_jax.serving.api under the config's limits (ff_jax.serving.limits), the bearer token
as a dependency (ff_jax.serving.auth), one form for every refusal (ff_jax.serving.problems: every
4xx body is {"detail": [{"field": ..., "message": ...}]} naming the field at fault), the body limit
and request metrics (ff_jax.serving.middleware), and what the routes serve with
(ff_jax.serving.services: the engine, its one worker thread, the micro-batcher, the lifespan).
"""

import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ff_jax.serving import problems
from ff_jax.serving.api import ItemsRequest, RecommendRequest, ServerConfig
from ff_jax.serving.limits import bounded
from ff_jax.serving.middleware import BodyLimit, RequestMetrics
from ff_jax.serving.routes import health, items, metrics, recommend
from ff_jax.serving.services import Services

__all__ = ["PortUnavailable", "ServerConfig", "create_app", "listening_socket", "serve"]


def create_app(bundle_dir: str | Path, state_dir: str | Path, config: ServerConfig = ServerConfig()) -> FastAPI:
    services = Services.open(bundle_dir, state_dir, config)
    app = FastAPI(title="ff_jax recommendations", version=services.engine.bundle.manifest["created"],
                  lifespan=services.lifespan)
    app.state.services, app.state.engine = services, services.engine
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=services.metrics)  # added last, so outermost: counts 413s too
    problems.install(app)
    for router in (health.router, metrics.router, recommend.router(bounded(RecommendRequest, config)),
                   items.router(bounded(ItemsRequest, config))):
        app.include_router(router)
    return app


class PortUnavailable(OSError):
    """The address `ff-jax serve` was asked to listen on is taken (or not ours to take)."""

    label = "port unavailable"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for uvicorn to listen on; refuses one in use in one line
    (uvicorn itself logs [Errno 98] and exits with status 3)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port at once
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PortUnavailable(f"{host}:{port}: {err.strerror} (is another server listening there? choose another "
                              "--port)") from None
    sock.set_inheritable(True)
    return sock


def serve(bundle_dir: str, state_dir: str, host: str, port: int, config: ServerConfig = ServerConfig()) -> None:
    """Runs the server until interrupted. The port is taken first: one in use is said before the
    bundle is loaded."""
    sock = listening_socket(host, port)
    try:
        app = create_app(bundle_dir, state_dir, config)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()

