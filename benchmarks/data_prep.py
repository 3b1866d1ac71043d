"""Preparing a dataset: the id store (ff_jax.data.store) beside the text-record TFDS path it replaced.

Each path runs in its own process on the same dataset, from nothing prepared; the table gives wall
time, training examples per second of wall time (everything from reading/simulating the tables to
the last file written), peak RSS of the preparing process (and of its worker processes), and bytes
on disk per training example (train records alone, and everything with the item and member text).

Paths:
- `tfds-text` — the text records of revision BASELINE_REV (every example's whole prompt, TFDS's
  array_record writer), run from a temporary `git worktree` of that revision;
- `store, 1 process`, `store, 2 processes` — PrepareConfig(workers=1 / 2);
- `store, Ray Data` — PrepareConfig(engine="ray") on a local Ray instance of 2 CPUs.

    .venv/bin/python benchmarks/data_prep.py [--dataset feed_world --config 1m] [--paths ...]
        [--timeout 1800] [--out benchmarks/results/data_prep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "ed70dbd"  # the last revision whose records held text
PATHS = ("tfds-text", "store-1", "store-2", "store-ray")
LABELS = {"tfds-text": f"TFDS text records ({BASELINE_REV})", "store-1": "store, 1 process",
          "store-2": "store, 2 processes", "store-ray": "store, Ray Data (local, 2 CPUs)"}

# Runs in the child: prepares, then prints one JSON line with its own measurements.
CHILD = r"""
import json, resource, sys, time
name, config, data_dir, engine = sys.argv[1:5]
start = time.perf_counter()
if engine == "tfds":  # the baseline revision's module name
    from ff_jax.data import tfds_builders as tb
else:
    from ff_jax.data import prepared as tb
result = {}
try:
    if engine == "tfds":
        tb.build(name, config, data_dir)
        tb.build(name + "_corpus", config, data_dir)
    else:
        from ff_jax.data.prepare_engine import PrepareConfig
        kind, _, workers = engine.partition(":")
        tb.build(name, config, data_dir, PrepareConfig(engine=kind, workers=int(workers)))
    result["train_examples"] = len(tb.open_prepared(data_dir, name, config)[0]["train"])
except BaseException as err:  # the baseline is expected to die on large data: record how
    result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
result["seconds"] = time.perf_counter() - start
result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print("RESULT " + json.dumps(result), flush=True)
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_path(path: str, name: str, config: str, timeout: int, scratch: Path) -> dict:
    data_dir = scratch / f"data_{path}"
    env = {**os.environ, "PYTHONPATH": str(scratch / "baseline") if path == "tfds-text" else str(ROOT)}
    engine = {"tfds-text": "tfds", "store-1": "local:1", "store-2": "local:2", "store-ray": "ray:2"}[path]
    begin = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, name, config, str(data_dir), engine], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=scratch)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"error": done.stderr.strip().splitlines()[-1][:200]}
    except subprocess.TimeoutExpired:
        result = {"error": f"still running after {timeout} s (stopped)", "seconds": timeout}
    result["wall_seconds"] = time.perf_counter() - begin
    result["disk_bytes"] = folder_bytes(data_dir) if data_dir.exists() else 0
    train = list(data_dir.rglob("train.arrow")) if data_dir.exists() else []
    if train and result.get("train_examples"):
        result["train_bytes_per_example"] = train[0].stat().st_size / result["train_examples"]
    if result.get("train_examples"):
        result["examples_per_second"] = result["train_examples"] / result["seconds"]
        result["disk_bytes_per_example"] = result["disk_bytes"] / result["train_examples"]
    return result


def markdown(results: dict, args, machine: dict) -> str:
    lines = [f"# Preparing {args.dataset}/{args.config}", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; load average at "
             f"start {machine['load_average']:.1f}. Date: {time.strftime('%Y-%m-%d')}. Peak RSS is the preparing "
             "process's.", "",
             "| path | wall | training examples/s | peak RSS | disk / training example (train records alone) | outcome |",
             "|---|---|---|---|---|---|"]
    for path, r in results.items():
        disk = (f"{r['disk_bytes_per_example']:,.0f} B ({r['train_bytes_per_example']:.0f} B)"
                if "disk_bytes_per_example" in r else f"{r['disk_bytes'] / 2**20:.0f} MB written")
        rate = f"{r['examples_per_second']:,.0f}" if "examples_per_second" in r else "—"
        outcome = r["error"] if "error" in r else f"{r['train_examples']:,} training examples"
        lines.append(f"| {LABELS[path]} | {r.get('seconds', r['wall_seconds']):.0f} s | {rate} | "
                     f"{r.get('peak_rss_gb', float('nan')):.2f} GB | {disk} | {outcome} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="feed_world")
    parser.add_argument("--config", default="1m")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_prep"))
    parser.add_argument("--table_only", action="store_true", help="rewrite the .md from the .json of an earlier run")
    args = parser.parse_args()
    out = Path(args.out + f"_{args.dataset}_{args.config}")
    if args.table_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(markdown(saved["results"], args, saved["machine"]))
        print(out.with_suffix(".md").read_text())
        return
    machine = describe("pyarrow", "pandas")
    results = {}
    with tempfile.TemporaryDirectory(prefix="data_prep_") as scratch:
        scratch = Path(scratch)
        paths = args.paths.split(",")
        if "tfds-text" in paths:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(scratch / "baseline"),
                            BASELINE_REV], check=True, capture_output=True)
        try:
            for path in paths:
                results[path] = run_path(path, args.dataset, args.config, args.timeout, scratch)
                print(path, json.dumps(results[path]), flush=True)
        finally:
            if "tfds-text" in paths:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch / "baseline")],
                               capture_output=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    out.with_suffix(".md").write_text(markdown(results, args, machine))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
