"""The same server as a Ray Serve deployment of N replicas (`pip install 'ff_jax[ray]'`).

Each replica builds the FastAPI app of ff_jax.serving.server in its own process (the bundle is
loaded and verified there, never pickled), and Ray's proxy spreads requests over the replicas.
The replicas share one state folder, so one items log: a fresh item acknowledged by one replica
is indexed by every other one at its next batch (ff_jax.serving.items_log; one host). How the
catalogue shards across hosts is on paper in docs/serving.md.
"""

from pathlib import Path

from ray import serve

from ff_jax.serving.api import ServerConfig
from ff_jax.serving.server import create_app


@serve.ingress()
class BundleReplica:
    def __init__(self, bundle_dir: str, state_dir: str, config: ServerConfig):
        self.args = (bundle_dir, state_dir, config)

    def __serve_build_asgi_app__(self):
        return create_app(*self.args)


def application(bundle_dir: str | Path, state_dir: str | Path, config: ServerConfig = ServerConfig(),
                replicas: int = 2, cpus_per_replica: float = 1.0):
    """The bound deployment, for `serve.run(application(...), route_prefix="/")`."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    deployment = serve.deployment(BundleReplica, name="ff_jax", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica})
    return deployment.bind(str(Path(bundle_dir).absolute()), str(Path(state_dir).absolute()), config)


def run(bundle_dir: str, state_dir: str, host: str, port: int, config: ServerConfig, replicas: int) -> None:
    """Starts a local Ray instance and serves until interrupted."""
    import ray

    ray.init()
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(bundle_dir, state_dir, config, replicas), route_prefix="/", blocking=True)
