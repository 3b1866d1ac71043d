"""Where the text of a preparation is rendered: this machine's cores, or a Ray cluster (Ray Data).

Rendering item prompts, history pieces and member profiles is the work that grows with the data's
text; it is a pure function of a chunk of rows. An engine maps that function over the chunks of a
frame and returns the results in order, so every engine writes the same records
(tests/data/test_prepare_engines.py). Ids, splits and the quantiser are computed by the preparing
process itself: they take tens of bytes per interaction.

    --gin.PrepareConfig.workers=2                      # processes on this machine (default: its cores)
    --gin.PrepareConfig.engine="ray"                   # Ray Data on a local Ray instance
    --gin.PrepareConfig.ray_address="ray://head:10001" # ... or on a cluster

Ray Data rather than Apache Beam: Ray already installs with the project (sweeps and serving use
it), it runs the same Python functions without a pipeline rewrite, and it starts locally in seconds
where Beam's DirectRunner would add a second large dependency for the same map.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Optional

import gin
import pandas as pd

ENGINES = ("local", "ray")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """engine: "local" (processes on this machine) or "ray" (Ray Data). workers: local processes
    (None: this machine's cores; 1: in this process). ray_address: None starts a local Ray instance;
    "auto" or "ray://host:port" joins a cluster. chunk: rows rendered per task."""

    engine: str = "local"
    workers: Optional[int] = None
    ray_address: Optional[str] = None
    chunk: int = 65_536

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"PrepareConfig.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"PrepareConfig.workers must be >= 1, got {self.workers}")
        if self.chunk < 1:
            raise ValueError(f"PrepareConfig.chunk must be >= 1, got {self.chunk}")


Render = Callable[[pd.DataFrame], pd.DataFrame]


def map_chunks(render: Render, frame: pd.DataFrame, config: PrepareConfig) -> Iterator[pd.DataFrame]:
    """`render` of every `config.chunk` rows of `frame`, in order (concatenated: `render(frame)`)."""
    if config.engine == "ray":
        yield from _ray_map(render, frame, config)
        return
    chunks = (frame.iloc[start:start + config.chunk] for start in range(0, len(frame), config.chunk))
    workers = min(config.workers or len(os.sched_getaffinity(0)), -(-len(frame) // config.chunk))
    if workers <= 1:
        yield from map(render, chunks)
        return
    # spawn, not fork: the preparing process may already run JAX's threads, which fork would copy mid-state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:  # at most 2 chunks a worker in flight: memory stays bounded
            pending.append(pool.submit(render, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _ray_map(render: Render, frame: pd.DataFrame, config: PrepareConfig) -> Iterator[pd.DataFrame]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("PrepareConfig.engine='ray' needs Ray: pip install 'ff_jax[ray]'") from None
    if not ray.is_initialized():
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers or len(os.sched_getaffinity(0)), include_dashboard=False,
                     log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records are written in the frame's order
    context.enable_progress_bars = False
    dataset = ray.data.from_pandas(frame.reset_index(drop=True))
    rendered = dataset.map_batches(render, batch_size=config.chunk, batch_format="pandas")
    for batch in rendered.iter_batches(batch_size=config.chunk, batch_format="pandas"):
        yield batch
