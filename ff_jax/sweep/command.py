"""`ff-jax sweep`: prepare the data, run every unfinished run, collect each run's results and write
the summary (csv, md, plots); or, with --dry_run, print the commands for a scheduler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import pandas as pd

from ff_jax.files import write_atomic
from ff_jax.sweep.datasets import prepare_data
from ff_jax.sweep.plots import plot
from ff_jax.sweep.results import collect
from ff_jax.sweep.runs import Executor, Run, SweepError, command_lines, execute_each, is_finished, plan
from ff_jax.sweep.summary import summary_markdown, summary_rows
from ff_jax.sweep.sweep_file import Sweep, SweepFileError, load


def summarize(sweep: Sweep, runs: Sequence[Run], results: Path) -> Optional[pd.DataFrame]:
    """summary.csv, summary.md and the plots of the runs with results; None when there are none."""
    table = summary_rows(runs, results)
    if table.empty:
        return None
    write_atomic(results / "summary.csv", table.to_csv(index=False))
    write_atomic(results / "summary.md", summary_markdown(sweep, table))
    plot(table, results)
    return table


def run_sweep(sweep: Sweep, workdir: Path, results_dir: Path, data_dir: Path, gin_files: Sequence[str] = (),
              bindings: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
              variants: Optional[Sequence[str]] = None,
              log: Callable[[str], None] = print, executor: Executor = execute_each) -> dict[str, list[str]]:
    """Prepares the data, runs every unfinished run (of `seeds` and `variants` only, when given) with
    `executor` (one after the other here by default; ff_jax.sweep.ray_runs.ray_executor for Ray tasks),
    collects and summarises every run of the file that has results; returns the run names by outcome
    ("skipped", "ran", "failed"), in the file's order. Raises SweepError naming the failed runs at the end."""
    every = plan(sweep, workdir, data_dir, gin_files, bindings)
    runs = selected(every, seeds, variants)
    results = results_dir / sweep.name
    todo = [r for r in runs if not is_finished(r)]
    if todo:
        prepare_data(sweep, data_dir, log)
    for run in runs:
        if run not in todo and not (results / "runs" / run.name / "metrics_test.json").exists():
            collect(run, results)
    position = {run.name: i for i, run in enumerate(runs, 1)}
    succeeded = {}
    for run, ok in executor(todo, sweep.name, lambda r: log(f"[{position[r.name]}/{len(runs)}] {r.name} in "
                                                            f"{r.workdir}"), log):
        if ok:
            collect(run, results)
        succeeded[run.name] = ok
    outcome = {"skipped": [r.name for r in runs if r not in todo],
               "ran": [r.name for r in todo if succeeded.get(r.name)],
               "failed": [r.name for r in todo if not succeeded.get(r.name)]}
    table = summarize(sweep, every, results)
    log(f"{len(outcome['ran'])} ran, {len(outcome['skipped'])} already finished, {len(outcome['failed'])} failed"
        + (f"; summary: {results / 'summary.md'}" if table is not None else ""))
    if outcome["failed"]:
        raise SweepError(f"{len(outcome['failed'])} run(s) failed: "
                         + ", ".join(f"{n} (log: {workdir / sweep.name / n / 'logs'})" for n in outcome["failed"])
                         + "; the same command again re-runs only these")
    return outcome


def chosen_seeds(sweep: Sweep, seeds: Sequence[str]) -> tuple[int, ...]:
    """`--seeds`, which must be among the file's own (e.g. a first pass with one)."""
    try:
        chosen = tuple(int(s) for s in seeds)
    except ValueError:
        chosen = ()
    if not chosen or set(chosen) - set(sweep.seeds):
        raise SweepFileError(f"--seeds={','.join(map(str, seeds))}: {sweep.path} has seeds {list(sweep.seeds)}")
    return chosen


def chosen_variants(sweep: Sweep, names: Sequence[str]) -> tuple[str, ...]:
    """`--variants`, which must be among the file's own (e.g. the comparison that matters first)."""
    known = [v.name for v in sweep.variants]
    if not names or set(names) - set(known):
        raise SweepFileError(f"--variants={','.join(names)}: {sweep.path} has variants {known}")
    return tuple(names)


def selected(runs: Sequence[Run], seeds: Optional[Sequence[int]], variants: Optional[Sequence[str]]) -> list[Run]:
    return [r for r in runs if (seeds is None or r.seed in seeds) and (variants is None or r.variant.name in variants)]


def ray_resources(sweep: Sweep, cpus: Optional[float], gpus: Optional[float]) -> dict[str, float]:
    """What each run asks Ray for: the sweep file's `resources`, with --ray_cpus / --ray_gpus over them."""
    return {"cpus": sweep.resources["cpus"] if cpus is None else cpus,
            "gpus": sweep.resources["gpus"] if gpus is None else gpus}


def main(args) -> None:
    """`ff-jax sweep` with its parsed flags (ff_jax/cli.py)."""
    if not args.sweep:
        raise SweepFileError("--sweep=NAME is required (a file in configs/sweeps/, e.g. --sweep=pooling_feed_world)")
    sweep = load(args.sweep)
    seeds = chosen_seeds(sweep, args.seeds) if args.seeds else None
    variants = chosen_variants(sweep, args.variants) if args.variants else None
    workdir, data_dir = Path(args.workdir), Path(args.data_dir)
    use_ray = args.ray or bool(args.ray_address)
    if args.multihost and not args.dry_run:
        raise SweepError("--multihost only shapes the printed commands: use it with --dry_run")
    if (args.ray_cpus is not None or args.ray_gpus is not None) and not use_ray:
        raise SweepError("--ray_cpus and --ray_gpus size each run's Ray task: use them with --ray or --ray_address")
    if use_ray and (args.dry_run or args.prepare_only):
        raise SweepError("--ray runs the sweep's runs as Ray tasks: it goes with neither --dry_run nor --prepare_only")
    if args.prepare_only:
        prepare_data(sweep, data_dir)
        return
    if args.dry_run:
        runs = plan(sweep, workdir, data_dir, args.gin_file or (), args.gin_bindings, args.multihost)
        print("\n".join(command_lines(sweep, selected(runs, seeds, variants), data_dir)))
        return
    sweep_args = (sweep, workdir, Path(args.results_dir), data_dir, args.gin_file or (), args.gin_bindings, seeds,
                  variants)
    if not use_ray:
        run_sweep(*sweep_args)
        return
    from ff_jax.sweep import ray_runs  # Ray is imported only on this path

    resources = ray_resources(sweep, args.ray_cpus, args.ray_gpus)
    connected = ray_runs.connect(args.ray_address, resources)
    try:
        run_sweep(*sweep_args, executor=ray_runs.ray_executor(resources))
    finally:
        if connected:
            import ray

            ray.shutdown()
