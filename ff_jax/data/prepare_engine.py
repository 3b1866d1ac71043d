"""Where the text of a preparation is rendered: this machine's cores, or a Ray cluster (Ray Data).

Rendering item prompts, history pieces and member profiles is the work that grows with the data's
text; it is a pure function of a chunk of rows. An engine maps that function over the chunks of a
frame and returns the results in order, so every engine writes the same records
(tests/data/test_prepare_engines.py). Ids, splits and the quantiser are computed by the preparing
process itself: they take tens of bytes per interaction, and it computes them while the workers render.

Local workers get no pickled frames: the frame is written once as an Arrow IPC file that every worker
memory-maps, and a worker sends its rendered chunk back as Arrow buffers (a pickled frame of Python
strings costs the preparing process about as much CPU as rendering it).

    --gin.PrepareConfig.workers=2                      # processes on this machine (default: its cores)
    --gin.PrepareConfig.engine="ray"                   # Ray Data on a local Ray instance
    --gin.PrepareConfig.ray_address="ray://head:10001" # ... or on a cluster

Ray Data rather than Apache Beam: Ray already installs with the project (sweeps and serving use
it), it runs the same Python functions without a pipeline rewrite, and it starts locally in seconds
where Beam's DirectRunner would add a second large dependency for the same map.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import gin
import pandas as pd
import pyarrow as pa

ENGINES = ("local", "ray")
AHEAD = 2  # chunks the preparing process renders ahead of the one it waits for


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


class Render(Protocol):
    """A pure function of a chunk of rows -> one record batch of `schema` (picklable, for workers)."""

    schema: pa.Schema

    def __call__(self, chunk: pd.DataFrame) -> pa.RecordBatch: ...


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def _write_ipc(table: pa.Table | pa.RecordBatch, path: Path) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write(table)


def _render_file_chunk(render: Render, source: str, start: int, stop: int) -> pa.RecordBatch:
    """In a worker: rows [start, stop) of the IPC file `source` -> `render`. The batch travels back as
    Arrow buffers (a copy of its bytes, no Python object per string)."""
    with pa.memory_map(source, "r") as mapped:
        chunk = pa.ipc.open_file(mapped).read_all().slice(start, stop - start).to_pandas()
    return render(chunk)


class ChunkMapper:
    """Maps Render functions over the chunks of frames, on `config`'s engine. Locally, `workers` - 1
    processes (started once, shared by every map) read the frame from a file in `scratch`, and the preparing
    process is the last worker: when it reads a chunk no process has started, it renders it itself, and
    while it waits for a running one it renders the next chunk not started. Use it as a context manager."""

    def __init__(self, config: PrepareConfig, scratch: Path):
        self.config, self.scratch = config, Path(scratch)
        self._pool: ProcessPoolExecutor | None = None
        self._maps = 0

    def __enter__(self) -> ChunkMapper:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(self, render: Render, frame: pd.DataFrame) -> Iterator[pa.RecordBatch]:
        """`render` of every `config.chunk` rows of `frame`, in order. With local workers the work starts
        now, so the caller can do its own while they render; otherwise when the result is iterated."""
        config, n = self.config, len(frame)
        starts = range(0, n, config.chunk)
        if config.engine == "ray":
            return (batch for rendered in _ray_map(_AsTable(render), frame, config)
                    for batch in rendered.cast(render.schema).combine_chunks().to_batches())
        if min(config.workers or _cores(), len(starts)) <= 1:
            return (render(frame.iloc[start:start + config.chunk]) for start in starts)
        if self._pool is None:  # spawn, not fork: the preparing process may already run JAX's threads
            self._pool = ProcessPoolExecutor((config.workers or _cores()) - 1,
                                             mp_context=multiprocessing.get_context("spawn"))
        self._maps += 1
        self.scratch.mkdir(parents=True, exist_ok=True)
        source = self.scratch / f"map{self._maps}-source.arrow"
        _write_ipc(pa.Table.from_pandas(frame, preserve_index=False), source)
        tasks = [self._pool.submit(_render_file_chunk, render, str(source), start, min(start + config.chunk, n))
                 for start in starts]
        here = lambda k: render(frame.iloc[starts[k]:starts[k] + config.chunk])  # noqa: E731
        return self._collect(tasks, source, here)

    @staticmethod
    def _collect(tasks: list, source: Path, here) -> Iterator[pa.RecordBatch]:
        stolen: dict[int, pa.RecordBatch] = {}  # rendered here ahead of their turn
        try:
            for k in range(len(tasks)):
                future = tasks[k]
                while k not in stolen and not future.done() and not future.cancel():
                    # A chunk rendered ahead is held until its turn: take the nearest not started, and
                    # at most AHEAD of them, so memory stays a few chunks.
                    ahead = None if len(stolen) >= AHEAD else next(
                        (j for j in range(k + 1, len(tasks)) if j not in stolen and tasks[j].cancel()), None)
                    if ahead is None:  # nothing left to take, or enough held: wait for the worker
                        break
                    stolen[ahead] = here(ahead)
                rendered = stolen.pop(k) if k in stolen else here(k) if future.cancelled() else future.result()
                # A future keeps its result: let go of it, or every chunk's text stays in memory
                # until the map ends (0.9 GB more at feed_world 1m).
                tasks[k] = future = None
                yield rendered
                del rendered
        finally:
            for future in tasks:  # after a failure: nothing more is rendered
                if future is not None:
                    future.cancel()
            source.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class _AsTable:
    """A Render for Ray Data: a pandas batch in, an Arrow table out (Ray keeps Arrow blocks as they are)."""

    render: Render

    def __call__(self, chunk: pd.DataFrame) -> pa.Table:
        return pa.Table.from_batches([self.render(chunk)])


def _ray_map(render: Callable[[pd.DataFrame], pa.Table], frame: pd.DataFrame,
             config: PrepareConfig) -> Iterator[pa.Table]:
    try:
        import ray
    except ImportError:
        raise RuntimeError("PrepareConfig.engine='ray' needs Ray: pip install 'ff_jax[ray]'") from None
    if not ray.is_initialized():
        if config.ray_address:
            ray.init(address=config.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers or _cores(), include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # records are written in the frame's order
    context.enable_progress_bars = False
    dataset = ray.data.from_pandas(frame.reset_index(drop=True))
    rendered = dataset.map_batches(render, batch_size=config.chunk, batch_format="pandas")
    for batch in rendered.iter_batches(batch_size=config.chunk, batch_format="pyarrow"):
        yield batch
