"""Preparing a dataset: the id store (ff_jax.data.store), A/B against an earlier revision in the same run.

Each path runs in its own process on the same input, from nothing prepared. The input's source is
produced once, before the paths run, and its cost is reported apart from preparation:
- feed_world: the simulator generates the tables once (its time is the "source" column); each path
  unpickles them and prepares;
- `--tables N`: a tables folder (users / items / interactions Parquet files + schema.json) written from
  feed_world size N (`medium`: ~1M interactions); each path reads the files itself (its "source").

Columns: prep (wall time from tables in memory to the last file written: split, quantiser, text,
records), training examples per second of prep, peak RSS of the preparing process and of its worker
processes, bytes on disk per training example (all files, and train records alone), stage times
(temporal_split / quantiser fit / write_store: text rendering and records, which overlap with local
workers) and the 1-minute load average before and after the path (other processes share the cores).

Paths:
- `old-N` — the store of revision `--old_rev` (default OLD_REV: before the array split and
  file-exchanging workers), PrepareConfig(workers=N), run from a temporary `git worktree` of it;
- `store-N` — this checkout, PrepareConfig(workers=N);
- `store-ray` — this checkout, Ray Data on a local Ray instance of 2 CPUs;
- `tfds-text` — the text records of revision BASELINE_REV (needs TensorFlow).

    .venv/bin/python benchmarks/data_prep.py [--dataset feed_world --config 1m | --tables medium]
        [--paths old-2,store-2,store-1] [--old_rev REV] [--timeout 1800] [--out benchmarks/results/data_prep_feed_world_1m]
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
OLD_REV = "deda95f"  # the store before issue 25 item 4 (per-member split loop, pickled chunks)
PATHS = ("old-2", "store-2", "store-1")
LABELS = {"tfds-text": f"TFDS text records ({BASELINE_REV})", "store-1": "store, 1 process",
          "store-2": "store, 2 processes", "store-ray": "store, Ray Data (local, 2 CPUs)",
          "old-1": f"store of {OLD_REV}, 1 process", "old-2": f"store of {OLD_REV}, 2 processes"}

# Writes the source once: the simulator's tables pickled, or a tables folder. Prints its seconds.
SOURCE = r"""
import json, pickle, sys, time
size, target, kind = sys.argv[1:4]
from ff_jax.data import feed_world
start = time.perf_counter()
tables = feed_world.generate(feed_world.feed_world_config(size, 0), progress=False).tables
seconds = time.perf_counter() - start
if kind == "pickle":
    with open(target, "wb") as f:
        pickle.dump(tables, f, protocol=5)
else:
    from pathlib import Path
    folder = Path(target)
    folder.mkdir(parents=True)
    for table in ("users", "items", "interactions"):
        getattr(tables, table).to_parquet(folder / f"{table}.parquet", index=False)
    (folder / "schema.json").write_text(json.dumps(tables.schema.to_dict()))
print("SOURCE " + json.dumps({"seconds": seconds, "interactions": len(tables.interactions),
                              "members": len(tables.users), "items": len(tables.items)}), flush=True)
"""

# Runs in the child: prepares, then prints one JSON line with its own measurements.
CHILD = r"""
import json, os, pickle, resource, sys, time
name, config, data_dir, engine, source = sys.argv[1:6]
start = time.perf_counter()
if engine == "tfds":  # the baseline revision's module name
    from ff_jax.data import tfds_builders as tb
else:
    from ff_jax.data import prepared as tb
try:  # prepare() and the builders' machinery moved to feed_builder (the prepared <-> tables_builder cycle)
    from ff_jax.data import feed_builder as machinery
except ImportError:  # earlier revisions: in prepared itself
    machinery = tb
stages = {}


def timed(attr, stage):  # the module globals prepare / download_and_prepare call, in every revision
    inner = getattr(machinery, attr)

    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - begin
    setattr(machinery, attr, wrapper)


result = {"load_before": os.getloadavg()[0]}
try:
    if engine == "tfds":
        tb.build(name, config, data_dir)
        tb.build(name + "_corpus", config, data_dir)
        result["train_examples"] = len(tb.open_prepared(data_dir, name, config)[0]["train"])
    else:
        from ff_jax.data.prepare_engine import PrepareConfig
        for attr, stage in (("temporal_split", "split"), ("fit_on_training", "quantiser"),
                            ("write_store", "render_and_write")):
            timed(attr, stage)
        if name == "tables":
            from ff_jax.data import tables_builder
            builder = tb.BUILDERS[name](config=tables_builder.tables_config(source), data_dir=data_dir)
            begin = time.perf_counter()
            tables = builder._load_tables()  # reading the files is this path's source
        else:
            builder = tb.BUILDERS[name](config=config, data_dir=data_dir)
            begin = time.perf_counter()
            with open(source, "rb") as f:
                tables = pickle.load(f)  # the simulator's tables, generated once by the parent
        result["source_seconds"] = time.perf_counter() - begin
        builder._load_tables = lambda: tables
        kind, _, workers = engine.partition(":")
        begin = time.perf_counter()
        builder.download_and_prepare(PrepareConfig(engine=kind, workers=int(workers)))
        result["prep_seconds"] = time.perf_counter() - begin
        result["train_examples"] = len(tb.open_prepared(data_dir, name, builder.builder_config.name)[0]["train"])
        result["stages"] = stages
except BaseException as err:  # the baseline is expected to die on large data: record how
    result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
result["seconds"] = time.perf_counter() - start
result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
result["workers_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
result["load_after"] = os.getloadavg()[0]
print("RESULT " + json.dumps(result), flush=True)
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_path(path: str, name: str, config: str, source: str, timeout: int, scratch: Path) -> dict:
    data_dir = scratch / f"data_{path}"
    code = {"tfds-text": scratch / "baseline", "old-1": scratch / "old", "old-2": scratch / "old"}.get(path, ROOT)
    env = {**os.environ, "PYTHONPATH": str(code)}
    engine = {"tfds-text": "tfds", "store-ray": "ray:2"}.get(path, "local:" + path.rsplit("-", 1)[-1])
    begin = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, name, config, str(data_dir), engine, source], env=env,
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
        result["examples_per_second"] = result["train_examples"] / result.get("prep_seconds", result["seconds"])
        result["disk_bytes_per_example"] = result["disk_bytes"] / result["train_examples"]
    return result


def make_source(args, scratch: Path) -> tuple[str, str, str, dict]:
    """(dataset name, config, source path, what making it took): the input every path prepares."""
    size = args.tables or args.config
    target = scratch / ("tables_folder" if args.tables else "tables.pickle")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SOURCE, size, str(target), "folder" if args.tables else "pickle"],
                          env=env, capture_output=True, text=True, check=True)
    made = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("SOURCE "))[7:])
    made["what"] = (f"a tables folder (Parquet + schema.json) of feed_world {size}" if args.tables
                    else f"the feed_world simulator, size {size}")
    return ("tables", "", str(target), made) if args.tables else (args.dataset, args.config, str(target), made)


def _label(path: str, run: dict) -> str:
    old = run.get("old_rev", OLD_REV)  # runs before --old_rev existed compared with OLD_REV
    return {"old-1": f"store of {old}, 1 process", "old-2": f"store of {old}, 2 processes"}.get(path, LABELS[path])


def _section(run: dict) -> list[str]:
    machine, results = run["machine"], run["results"]
    if "input" not in run:  # the first run (2026-12-07): whole wall time, simulator included
        lines = [f"## {run.get('date', '2026-12-07')}: wall time including the simulator", "",
                 f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; load average at "
                 f"start {machine['load_average']:.1f}. Peak RSS is the preparing process's.", "",
                 "| path | wall | training examples/s | peak RSS | disk / training example (train records alone) | outcome |",
                 "|---|---|---|---|---|---|"]
        for path, r in results.items():
            disk = (f"{r['disk_bytes_per_example']:,.0f} B ({r['train_bytes_per_example']:.0f} B)"
                    if "disk_bytes_per_example" in r else f"{r['disk_bytes'] / 2**20:.0f} MB written")
            rate = f"{r['examples_per_second']:,.0f}" if "examples_per_second" in r else "—"
            outcome = r["error"] if "error" in r else f"{r['train_examples']:,} training examples"
            lines.append(f"| {_label(path, run)} | {r.get('seconds', r['wall_seconds']):.0f} s | {rate} | "
                         f"{r.get('peak_rss_gb', float('nan')):.2f} GB | {disk} | {outcome} |")
        return lines
    made = run["input"]
    lines = [f"## {run['date']}: {made['what']}, prep A/B (this checkout at {run.get('revision', '?')})", "",
             f"Input: {made['interactions']:,} interactions, {made['members']:,} members, {made['items']:,} items; "
             f"making it took {made['seconds']:.0f} s (not part of prep). Machine: {machine['cpu']}, "
             f"{machine['cores']} cores, {machine['memory_gb']} GB, shared with other jobs: load average "
             f"{machine['load_average']:.1f} at start (before → after each path below).", "",
             "| path | source | prep | training examples/s (prep) | split / quantiser / text+records | peak RSS "
             "(workers) | disk / training example (train records) | load | outcome |",
             "|---|---|---|---|---|---|---|---|---|"]
    for path, r in results.items():
        if "error" in r:
            lines.append(f"| {_label(path, run)} | | | | | | | | {r['error']} |")
            continue
        st = r.get("stages", {})
        lines.append(
            f"| {_label(path, run)} | {r['source_seconds']:.0f} s | {r['prep_seconds']:.1f} s | "
            f"{r['examples_per_second']:,.0f} | {st.get('split', 0):.1f} / {st.get('quantiser', 0):.1f} / "
            f"{st.get('render_and_write', 0):.1f} s | {r['peak_rss_gb']:.2f} GB ({r['workers_peak_rss_gb']:.2f} GB) | "
            f"{r['disk_bytes_per_example']:,.0f} B ({r['train_bytes_per_example']:.0f} B) | "
            f"{r['load_before']:.1f} → {r['load_after']:.1f} | {r['train_examples']:,} training examples |")
    for path, r in results.items():
        new = results.get("store-" + path.removeprefix("old-"), {})
        if path.startswith("old-") and "prep_seconds" in r and "prep_seconds" in new:
            lines += ["", f"{_label(path, run)} → this checkout, same workers, same run: prep "
                          f"{r['prep_seconds'] / new['prep_seconds']:.1f}× faster."]
    return lines


def markdown(runs: list[dict], title: str) -> str:
    lines = [f"# Preparing {title}", ""]
    for run in runs:
        lines += _section(run) + [""]
    return "\n".join(lines)


def load_runs(path: Path) -> list[dict]:
    """The runs recorded so far (the first file held one run as {machine, results})."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    return saved["runs"] if "runs" in saved else [saved]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="feed_world")
    parser.add_argument("--config", default="1m")
    parser.add_argument("--tables", default="", help="prepare a tables folder written from this feed_world size")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--old_rev", default=OLD_REV, help="the revision the old-N paths run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_prep_feed_world_1m"),
                        help="results file (without suffix); runs are added to the ones it holds")
    parser.add_argument("--table_only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    out = Path(args.out)
    runs = load_runs(out.with_suffix(".json"))
    title = out.name.removeprefix("data_prep_")
    if not args.table_only:
        machine = describe("pyarrow", "pandas")
        results = {}
        paths = args.paths.split(",")
        worktrees = {"tfds-text": ("baseline", BASELINE_REV), "old-1": ("old", args.old_rev),
                     "old-2": ("old", args.old_rev)}
        with tempfile.TemporaryDirectory(prefix="data_prep_") as scratch:
            scratch = Path(scratch)
            added = {worktrees[p] for p in paths if p in worktrees}
            for folder, rev in added:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(scratch / folder), rev],
                               check=True, capture_output=True)
            try:
                name, config, source, made = make_source(args, scratch)
                print("source", json.dumps(made), flush=True)
                for path in paths:
                    results[path] = run_path(path, name, config, source, args.timeout, scratch)
                    print(path, json.dumps(results[path]), flush=True)
            finally:
                for folder, _ in added:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(scratch / folder)],
                                   capture_output=True)
        revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
        runs.append({"date": time.strftime("%Y-%m-%d %H:%M"), "revision": revision, "old_rev": args.old_rev,
                     "input": made, "machine": machine, "results": results})
        out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    out.with_suffix(".md").write_text(markdown(runs, title))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
