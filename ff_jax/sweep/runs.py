"""A sweep's runs: each variant x seed planned as three `ff-jax` commands (train, embed, eval) in
a workdir of its own, run as subprocesses, and resumed: a run is finished when its workdir's
sweep_run.json lists the same commands and the sha256 it recorded of the eval results still
matches them."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from ff_jax.files import sha256_file, write_atomic
from ff_jax.sweep.datasets import data_bindings
from ff_jax.sweep.sweep_file import Sweep, Variant, gin_text

RECORD = "sweep_run.json"  # in each run's workdir: its commands, stage times and eval checksum
EVAL_FILE = Path("eval") / "metrics_test.json"
STAGES = ("train", "embed", "eval")


class SweepError(ValueError):
    """A sweep that cannot go on as asked (a workdir holding another run, failed runs)."""

    label = "sweep failed"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # <variant>_seed<seed>: its folder under the sweep's workdir and results
    variant: Variant
    seed: int
    workdir: Path
    commands: tuple[tuple[str, ...], ...]  # train, embed, eval argv, "ff-jax" first

    @property
    def eval_file(self) -> Path:
        return self.workdir / EVAL_FILE


def _flags(bindings: dict[str, Any], where: str) -> list[str]:
    return [f"--gin.{k}={gin_text(v, f'{where}: {k}')}" for k, v in bindings.items()]


def plan(sweep: Sweep, workdir: Path, data_dir: Path, gin_files: Sequence[str] = (),
         bindings: Sequence[str] = (), multihost: bool = False) -> list[Run]:
    """Every run of the sweep (variants in file order, then seeds), with its commands. `gin_files`
    and `bindings` ("NAME=VALUE") are appended to every training command, last, so they win."""
    runs = []
    for variant in sweep.variants:
        for seed in sweep.seeds:
            name = f"{variant.name}_seed{seed}"
            run_dir = workdir / sweep.name / name
            train_bindings = {**data_bindings(sweep, variant, data_dir), **sweep.train, **variant.train,
                              "train.seed": seed, "FeedData.seed": seed}
            where = f"{sweep.path}: variants.{variant.name}"
            train = ["ff-jax", "train", *(["--distributed"] if multihost else []),
                     *(f"--gin_file={f}" for f in [*sweep.gin_files, *gin_files]), *_flags(train_bindings, where),
                     *(f"--gin.{b}" for b in bindings), f"--workdir={run_dir}"]
            embed = ["ff-jax", "embed", *_flags({**sweep.embed, **variant.embed}, where), f"--workdir={run_dir}"]
            evaluate = ["ff-jax", "eval", *_flags({**sweep.eval, **variant.eval}, where), f"--workdir={run_dir}"]
            runs.append(Run(name, variant, seed, run_dir, (tuple(train), tuple(embed), tuple(evaluate))))
    return runs


def command_lines(sweep: Sweep, runs: Sequence[Run], data_dir: Path) -> list[str]:
    """What --dry_run prints: the data preparation (when the sweep has one), then each run's
    commands in order, one shell-quoted command per line."""
    lines = []
    if sweep.prepare:
        shown = os.path.relpath(sweep.path) if sweep.path.resolve().is_relative_to(Path.cwd()) else sweep.path
        lines.append(shlex.join(["ff-jax", "sweep", f"--sweep={shown}", "--prepare_only", f"--data_dir={data_dir}"]))
    return lines + [shlex.join(command) for run in runs for command in run.commands]


def _read_record(run: Run) -> Optional[dict]:
    path = run.workdir / RECORD
    if not path.exists():
        if run.workdir.exists() and any(run.workdir.iterdir()):
            raise SweepError(f"{run.workdir}: not empty and holds no {RECORD}; it is not this sweep's run "
                             "(move it away, or give the sweep another --workdir)")
        return None
    record = json.loads(path.read_text())
    now = [list(c) for c in run.commands]
    if now != record["commands"]:
        was = next((c for c, n in zip(record["commands"], now) if c != n), record["commands"][0])
        raise SweepError(f"{run.workdir}: holds a run of other commands (was: {shlex.join(was)}); the sweep file "
                         "or flags changed: remove that workdir to run it again, or rename the variant")
    return record


def is_finished(run: Run) -> bool:
    """Its eval results exist and are the ones its recorded commands produced."""
    record = _read_record(run)
    return bool(record and record.get("eval_sha256") and run.eval_file.exists()
                and sha256_file(run.eval_file) == record["eval_sha256"])


def _write_record(run: Run, record: dict) -> None:
    write_atomic(run.workdir / RECORD, json.dumps(record, indent=1))


def _executable() -> str:
    """ff-jax beside the running interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "ff-jax"
    found = str(beside) if beside.exists() else shutil.which("ff-jax")
    if not found:
        raise FileNotFoundError("ff-jax: not found beside the Python interpreter nor on PATH (pip install -e .)")
    return found


def execute(run: Run, sweep_name: str, log: Callable[[str], None] = print) -> bool:
    """Runs the run's three commands in order, each a subprocess logging to <workdir>/logs/;
    records their wall times. Returns False (and logs where to look) if one fails."""
    record = _read_record(run) or {"sweep": sweep_name, "run": run.name, "variant": run.variant.name,
                                   "seed": run.seed, "bindings": run.variant.train, "data": run.variant.data,
                                   "commands": [list(c) for c in run.commands], "seconds": {}}
    record.pop("eval_sha256", None)
    (run.workdir / "logs").mkdir(parents=True, exist_ok=True)
    _write_record(run, record)
    for stage, command in zip(STAGES, run.commands):
        log_file = run.workdir / "logs" / f"{stage}.log"
        start = time.perf_counter()
        with open(log_file, "a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            code = subprocess.run([_executable(), *command[1:]], stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        record["seconds"][stage] = record["seconds"].get(stage, 0.0) + seconds  # summed over attempts
        _write_record(run, record)
        if code != 0:
            log(f"  {run.name}: `ff-jax {stage}` exited {code} after {seconds:.0f} s; see {log_file}")
            return False
        log(f"  {run.name}: {stage} {seconds:.0f} s")
    record["eval_sha256"] = sha256_file(run.eval_file)
    _write_record(run, record)
    return True


# How a sweep executes its unfinished runs: (runs, sweep name, started(run), log) -> (run, succeeded)
# for each run, in the order they finish. `started` logs the run's "[i/n] name in workdir" line when
# it starts (or, under Ray, is submitted). The driver (command.run_sweep) decides what runs, collects
# each finished run and writes the summary, whichever executor ran them.
Executor = Callable[[Sequence[Run], str, Callable[[Run], None], Callable[[str], None]], Iterator[tuple[Run, bool]]]


def execute_each(runs: Sequence[Run], sweep_name: str, started: Callable[[Run], None],
                 log: Callable[[str], None] = print) -> Iterator[tuple[Run, bool]]:
    """The default executor: one run after the other, in this process (each stage a subprocess)."""
    for run in runs:
        started(run)
        yield run, execute(run, sweep_name, log)
