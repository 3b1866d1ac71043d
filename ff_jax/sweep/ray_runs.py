"""`ff-jax sweep --ray`: each unfinished run as one Ray task, on a local Ray instance or a cluster.

    ff-jax sweep --sweep=pooling_feed_world --ray                          # a local Ray instance
    ff-jax sweep --sweep=pooling_feed_world --ray_address=HEAD_IP:6379     # an existing cluster

A task does exactly what the sequential path does for one run (`runs.execute`: the three `ff-jax`
subprocesses, logging to the run's workdir, recording sweep_run.json) and asks Ray for the sweep
file's `resources` (default 1 CPU, no GPU; --ray_cpus and --ray_gpus override them). Ray only
executes: the driver (command.run_sweep) still decides which runs are finished, collects each run
as its task ends, and writes the summary, so skipping, resuming and summary.csv are the sequential
path's. A run whose command fails, or whose task dies, is a failed run, named at the end by the same
one-line error.

On a cluster every node must see the driver's working directory, --workdir and --data_dir at the
same paths (a shared filesystem), and have ff_jax installed (the task runs the `ff-jax` beside its
Python). Ray is optional: pip install 'ff_jax[ray]'. It is imported only here, only under --ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

from ff_jax.sweep.runs import Executor, Run, SweepError, execute


class RayUnavailable(SweepError):
    label = "missing dependency"


def _ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray, which is not installed: pip install 'ff_jax[ray]' "
                             "(or pip install 'ray>=2.60' into this environment)") from None
    return ray


def run_one(run: Run, sweep_name: str, cwd: str) -> tuple[bool, list[str]]:
    """The body of one Ray task: the run, from the driver's working directory (the runs' paths may be
    relative to it); returns whether it succeeded and the lines it logged."""
    if not Path(cwd).is_dir():
        raise SweepError(f"the driver's working directory {cwd} does not exist on this node: run the sweep "
                         "from a folder every node mounts at the same path")
    os.chdir(cwd)
    lines: list[str] = []
    return execute(run, sweep_name, lines.append), lines


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def ray_executor(resources: dict[str, float]) -> Executor:
    """An executor (runs.Executor) that submits every run as a Ray task asking for `resources`
    ({"cpus", "gpus"}) on the Ray instance this process is connected to, and yields each run as its
    task ends."""

    def run_all(runs: Sequence[Run], sweep_name: str, started: Callable[[Run], None],
                log: Callable[[str], None] = print) -> Iterator[tuple[Run, bool]]:
        ray = _ray()
        if not runs:
            return
        task = ray.remote(num_cpus=resources["cpus"], num_gpus=resources["gpus"], max_retries=0)(run_one)
        pending = {}
        for run in runs:
            pending[task.remote(run, sweep_name, os.getcwd())] = run
            started(run)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            try:
                ok, lines = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the task raised: the cause, in one line
                cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
                ok, lines = False, [f"  {run.name}: {type(cause).__name__}: {_first_line(cause)}"]
            except ray.exceptions.RayError as err:  # the worker or its node died
                ok, lines = False, [f"  {run.name}: its Ray task died: {_first_line(err)}"]
            for line in lines:
                log(line)
            yield run, ok

    return run_all


def connect(address: Optional[str], resources: dict[str, float], log: Callable[[str], None] = print) -> bool:
    """Connects to the cluster at `address`, or starts a local Ray instance with every CPU of this
    machine (none is started when this process is already connected). Refuses, rather than waits
    forever, a local instance too small for one run. Returns whether this call connected (and so
    should `ray.shutdown()` after)."""
    ray = _ray()
    if ray.is_initialized():
        connected = False
    elif address:
        ray.init(address=address, logging_level=logging.WARNING)
        connected = True
    else:
        # address="local": a new instance of our own, never someone else's running on this machine.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        connected = True
    total = ray.cluster_resources()
    have = {"cpus": total.get("CPU", 0.0), "gpus": total.get("GPU", 0.0)}
    log(f"Ray: {have['cpus']:g} CPUs, {have['gpus']:g} GPUs; each run asks for {resources['cpus']:g} CPUs, "
        f"{resources['gpus']:g} GPUs")
    short = [k for k in ("cpus", "gpus") if resources[k] > have[k]]
    if short and not address:
        if connected:
            ray.shutdown()
        raise SweepError(f"each run asks for {resources['cpus']:g} CPUs and {resources['gpus']:g} GPUs, but the "
                         f"local Ray instance has {have['cpus']:g} and {have['gpus']:g}: lower the sweep file's "
                         "resources (or --ray_cpus / --ray_gpus), or give --ray_address of a larger cluster")
    return connected
