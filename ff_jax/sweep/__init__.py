"""`ff-jax sweep`: variants x seeds of one experiment, each trained, embedded and evaluated by
ordinary `ff-jax` commands in a workdir of its own, then summarised.

    ff-jax sweep --sweep=pooling_feed_world              # configs/sweeps/pooling_feed_world.toml
    ff-jax sweep --sweep=pooling_feed_world --dry_run    # the commands, one per line, for a scheduler
    ff-jax sweep --sweep=pooling_feed_world --ray        # each run a Ray task, on a local Ray instance
    ff-jax sweep --sweep=pooling_feed_world --ray_address=HEAD:6379   # ... on a Ray cluster

A sweep file is a small TOML file in configs/sweeps/ (format in docs/experiments.md): the base gin
file(s), bindings for every run, `seeds`, and either named `[variants.NAME]` tables of gin bindings
or a `[grid]` whose lists are crossed. TOML rather than gin because gin binds the values of one
program, while a sweep is a list of programs; TOML is read by the standard library (tomllib) and,
unlike JSON, takes comments.

Each run is three subprocesses (`ff-jax train`, `embed`, `eval`), exactly what a user could type,
so a crash of one run leaves the others running and `--dry_run` prints the same commands. A run is
finished when its workdir's sweep_run.json lists the same commands and the sha256 of the eval
results it recorded still matches `eval/metrics_test.json`; finished runs are skipped, so the same
command again resumes a sweep (an interrupted `ff-jax train` resumes from its checkpoint). Results go to
`<results_dir>/<sweep>/`: per run a copy of its eval results, metrics.jsonl and a few members' top
items with text (runs/), then summary.csv (one row per run), summary.md (mean ± sample std over
seeds) and PNG plots.

The package, one idea per module, in the order a sweep uses them:
    sweep_file  reading and checking a sweep file; TOML values as gin flag values
    datasets    the dataset variants (numbers, history) the runs read, and preparing them
    runs        planning each run's commands, running them, resuming (sweep_run.json)
    ray_runs    --ray: each unfinished run as a Ray task with the file's `resources` (Ray imported only there)
    results     what a finished run leaves under <results>/runs/<run>/
    summary     summary.csv rows and summary.md (mean ± std over seeds)
    plots       the PNGs
    command     `ff-jax sweep` itself: prepare, run, collect, summarise (or --dry_run)
"""

from ff_jax.sweep.command import chosen_seeds, main, run_sweep, summarize
from ff_jax.sweep.datasets import PREPARATIONS, data_bindings, prepare_data
from ff_jax.sweep.plots import plot
from ff_jax.sweep.results import collect, top_items
from ff_jax.sweep.runs import (EVAL_FILE, RECORD, STAGES, Executor, Run, SweepError, command_lines, execute,
                               execute_each, is_finished, plan)
from ff_jax.sweep.summary import (flatten_metrics, format_mean_std, headline_columns, last_logged, mean_std,
                                  summary_markdown, summary_rows)
from ff_jax.sweep.sweep_file import SWEEPS_DIR, Sweep, SweepFileError, Variant, gin_text, load, resolve

__all__ = ["EVAL_FILE", "PREPARATIONS", "RECORD", "STAGES", "SWEEPS_DIR", "Executor", "Run", "Sweep", "SweepError",
           "SweepFileError", "Variant", "chosen_seeds", "collect", "command_lines", "data_bindings", "execute",
           "execute_each", "flatten_metrics", "format_mean_std", "gin_text", "headline_columns", "is_finished",
           "last_logged", "load", "main", "mean_std", "plan", "plot", "prepare_data", "resolve", "run_sweep",
           "summarize", "summary_markdown", "summary_rows", "top_items"]
