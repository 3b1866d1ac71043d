"""What one app serves with: the engine, its worker thread, the micro-batcher and the metrics, with
the app's lifespan (warm-up first in the worker's queue) and the readiness gate. Routes reach it
through the `services` dependency."""

import concurrent.futures
import dataclasses
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import Request

from ff_jax.serving.api import ServerConfig
from ff_jax.serving.batching import MicroBatcher
from ff_jax.serving.engine import Engine
from ff_jax.serving.metrics import ServingMetrics
from ff_jax.serving.problems import Refusal


@dataclasses.dataclass
class Services:
    config: ServerConfig
    metrics: ServingMetrics
    engine: Engine
    executor: concurrent.futures.ThreadPoolExecutor  # one worker: the engine's work never interleaves
    batcher: MicroBatcher
    warm_up_error: Optional[str] = None

    @classmethod
    def open(cls, bundle_dir: str | Path, state_dir: str | Path, config: ServerConfig) -> "Services":
        metrics = ServingMetrics()
        engine = Engine(bundle_dir, state_dir, config, metrics)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ff-jax-engine")
        batcher = MicroBatcher(engine.recommend, config.max_batch, config.max_queue_delay_ms / 1000, executor,
                               metrics.observe_batch)
        return cls(config, metrics, engine, executor, batcher)

    def warm_up(self) -> None:
        try:
            self.engine.start()
        except Exception as err:  # noqa: BLE001  (reported by /readyz and on stderr; the process stays up)
            self.warm_up_error = f"{type(err).__name__}: {err}"
            print(f"ff-jax serve: warm-up failed, /readyz answers 503: {self.warm_up_error}", file=sys.stderr)
            raise

    @asynccontextmanager
    async def lifespan(self, app):
        self.batcher.start()
        self.executor.submit(self.warm_up)  # first in the worker's queue: no request is served before it
        yield
        await self.batcher.stop()
        self.executor.shutdown(wait=True)
        self.engine.close()

    def require_ready(self) -> None:
        """Refuses (503, Retry-After) until every served shape is compiled and the items log replayed."""
        if not self.engine.ready:
            why = self.warm_up_error or "warming up (compiling every served shape, replaying the items log)"
            raise Refusal(503, "server", why, headers={"Retry-After": "1"})


def services(request: Request) -> Services:
    """The app's Services (a FastAPI dependency)."""
    return request.app.state.services
