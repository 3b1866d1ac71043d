"""The serving benchmark table of issue 17 in one command: builds the bundles that are missing, runs
benchmarks/serve.py for every row, and writes one JSON and a markdown table.

Rows: the tiny and the SmolLM2-135M bundles, each without and with a ranker, the ranker bundles
with prefill overlapped with retrieval and sequential; concurrency 1, 8 and 64 each; then a soak
at concurrency 64 on the tiny ranker bundle (0 errors, resident memory growth <= 10%), run by the
server of its overlapped row. Every level is bounded by requests and by seconds (BOUNDS), sized so
that the whole table takes about 25 minutes on a quiet 2-core CPU; `--quick` caps each level at
40 requests and 5 s and the soak at 3 s, to check that everything runs.

Bundles (under --bundles, default bench_out/serve_bundles; each built only when missing, steps in
--bundles/work, logs in --bundles/logs):
  tiny, tiny_ranker   `make demo`'s path (ff_jax/demo.py's gin files): feed_world "tiny_compact"
                      and its word-level tokenizer, the tiny dual encoder (--tiny-steps), `ff-jax
                      embed`, the tiny ranker on its neighbours (--tiny-ranker-steps), `ff-jax export`
  smol, smol_ranker   a copy of --smol-run (a SmolLM2-135M dual-encoder workdir; the copy takes the
                      export's embeddings), exported; the ranker is SmolLM2-135M from the pretrained
                      GGUF with the yes/no head (usable zero-shot) after --smol-ranker-steps
                      rank-train steps on the run's own data, small budgets (SMOL_RANKER)
The servers share a JAX compilation cache (--bundles/jax_cache), so a second server of the same
bundle (the sequential row) does not compile again; warm-up is not timed anyway.

Usage: python benchmarks/serve_table.py [--quick] [--build-only] [--only tiny tiny_ranker ...]
       [--bundles bench_out/serve_bundles] [--smol-run RUN] [--out bench_out/serve_table]
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import describe

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "ff_jax.cli"]

# (row id, label, bundle, sequential prefill). The soak runs in the row named by SOAK_ROW.
ROWS = [
    ("tiny", "tiny", "tiny", False),
    ("tiny_ranker", "tiny + ranker, prefill overlapped", "tiny_ranker", False),
    ("tiny_ranker_seq", "tiny + ranker, prefill sequential", "tiny_ranker", True),
    ("smol", "SmolLM2-135M", "smol", False),
    ("smol_ranker", "SmolLM2-135M + ranker, prefill overlapped", "smol_ranker", False),
    ("smol_ranker_seq", "SmolLM2-135M + ranker, prefill sequential", "smol_ranker", True),
]
SOAK_ROW, SOAK_SECONDS = "tiny_ranker", 300
CONCURRENCY = (1, 8, 64)
# Per level (concurrency 1, 8, 64): most requests, most seconds, untimed requests first. SmolLM2 on
# a CPU takes seconds a request, so its levels are sized to a few batches: at 64, one full batch
# of max_batch=64 at least (a level stops sending at its seconds; what is in flight completes).
# Estimated on a quiet 2-core CPU from SmolLM2's ~700 computed token slots/s
# (benchmarks/results/embed_throughput_cpu_2core.json): ~0.75 s a member for the tower (512 slots),
# ~2.2 s with the ranker (256-slot prefill, 3 rows of 4 candidates x 64 tokens); c=64 at 64
# requests is then ~50 s without and ~140 s with the ranker.
BOUNDS = {
    "tiny": dict(requests=(2000, 4000, 8000), seconds=(20, 20, 20), warmup=(20, 40, 128)),
    "smol": dict(requests=(6, 16, 64), seconds=(20, 30, 60), warmup=(1, 8, 0)),
}
TIMEOUT = {"tiny": 60, "smol": 900}  # seconds a request may take before it counts as an error
# Fewer shapes for SmolLM2: its warm-up compiles every (batch size, length) of both towers and the
# ranker's prefill, each several seconds on a CPU; at concurrency 64 it runs four batches of 16.
MAX_BATCH = {"tiny": 64, "smol": 16}
LENGTH_BUCKETS = {"tiny": (64,), "smol": (256,)}
# The export embeds the corpus (4,000 feed_world items of ~200 tokens with SmolLM2: the longest build
# step); one packed 512-token row per call is ~3x faster on a CPU than the run's training layout.
SMOL_EXPORT = ["BatchConfig.item_rows=1"]
SMOL_RANKER = ["HEAD='yes_no'", "RankerData.context_budget=256", "RankerConfig.candidate_budget=64",
               "RankerData.members_per_shard=1", "RankerData.impressed=1", "RankerData.negatives=1",
               "OptimizerConfig.warmup_steps=0", "make_mesh.data=1", "make_mesh.num_devices=1",
               "train_ranker.tensorboard=False"]


def run(command: list[str], log: Path) -> None:
    """Runs a build step, its output into `log`; a failure stops the table naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ {' '.join(command)}", flush=True)
    with open(log, "ab") as out:
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"failed: {' '.join(command)}\n(its output: {log})")


def gin_bindings(bindings: list[str]) -> list[str]:
    return [f"--gin.{b}" for b in bindings]


def build_tiny(bundles: Path, args) -> None:
    from ff_jax.data import compact_feed_world

    work, logs = bundles / "work" / "tiny", bundles / "logs"
    data_dir = work / "tfds"
    _, tokenizer = compact_feed_world.prepare(data_dir)
    data = [f"DATA_DIR={str(data_dir)!r}", f"TOKENIZER={tokenizer!r}"]
    run_dir, rank_dir = work / "run", work / "ranker"
    run([*CLI, "train", "--gin_file=experiments/compact_feed_world.gin",
         *gin_bindings([*data, f"STEPS={args.tiny_steps}"]), f"--workdir={run_dir}"], logs / "tiny_train.log")
    run([*CLI, "embed", f"--workdir={run_dir}"], logs / "tiny_embed.log")
    run([*CLI, "rank-train", "--gin_file=ranker/compact_feed_world.gin",
         *gin_bindings([*data, f"RETRIEVER={str(run_dir)!r}", f"STEPS={args.tiny_ranker_steps}"]),
         f"--workdir={rank_dir}"], logs / "tiny_ranker_train.log")
    for name, ranker in (("tiny", []), ("tiny_ranker", [f"--ranker={rank_dir}"])):
        if not (bundles / name).exists():
            run([*CLI, "export", f"--workdir={run_dir}", *ranker, f"--out={bundles / name}"], logs / f"{name}_export.log")


def macro(config: str, name: str) -> str:
    """A string macro's value in a run's config.gin (NAME = 'value')."""
    found = re.search(rf"^{name}\s*=\s*['\"]([^'\"]*)['\"]", config, re.M)
    if found is None:
        raise SystemExit(f"no {name} = '...' in the SmolLM2 run's config.gin")
    return found.group(1)


def build_smol(bundles: Path, args) -> None:
    work, logs = bundles / "work" / "smol", bundles / "logs"
    run_dir, rank_dir = work / "run", work / "ranker"
    if not run_dir.exists():  # a copy: export writes the corpus embeddings into the workdir
        if args.smol_run is None or not (args.smol_run / "config.gin").is_file():
            raise SystemExit(f"{args.smol_run}: not a training run (no config.gin); pass --smol-run")
        print(f"  copying {args.smol_run} -> {run_dir}", flush=True)
        shutil.copytree(args.smol_run, run_dir, ignore=shutil.ignore_patterns("embeddings", "bundle_embeddings"))
    config = (run_dir / "config.gin").read_text()
    data = [f"{name}={macro(config, name)!r}" for name in ("DATA_DIR", "DATASET", "DATASET_CONFIG")]
    run([*CLI, "rank-train", "--gin_file=model/smollm2_135m.gin", "--gin_file=ranker/train.gin",
         *gin_bindings([*data, f"STEPS={args.smol_ranker_steps}", *SMOL_RANKER]), f"--workdir={rank_dir}"],
        logs / "smol_ranker_train.log")
    for name, ranker in (("smol", []), ("smol_ranker", [f"--ranker={rank_dir}"])):
        if not (bundles / name).exists():
            run([*CLI, "export", f"--workdir={run_dir}", *ranker, *gin_bindings(SMOL_EXPORT), f"--out={bundles / name}"],
                logs / f"{name}_export.log")


def bench_row(row: tuple, bundles: Path, out: Path, quick: bool) -> dict:
    """One row through benchmarks/serve.py (its own server process); its JSON report."""
    row_id, label, bundle, sequential = row
    family = bundle.split("_")[0]
    bounds = BOUNDS[family]
    command = [sys.executable, str(HERE / "serve.py"), f"--bundle={bundles / bundle}", f"--label={label}",
               f"--out={out / 'rows' / (row_id + '.json')}", "--concurrency", *map(str, CONCURRENCY),
               *(x for name in ("requests", "seconds", "warmup") for x in (f"--{name}", *map(str, bounds[name]))),
               "--length-buckets", *map(str, LENGTH_BUCKETS[family]), f"--timeout={TIMEOUT[family]}",
               f"--max-batch={MAX_BATCH[family]}",
               f"--compile-cache={bundles / 'jax_cache'}"]
    if sequential:
        command.append("--sequential-prefill")
    if row_id == SOAK_ROW:
        command.append(f"--soak={SOAK_SECONDS}")
    if quick:
        command.append("--quick")
    print(f"\n{label}: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode:
        raise SystemExit(f"the row {label!r} failed")
    return json.loads((out / "rows" / f"{row_id}.json").read_text())


def cell(level: dict) -> str:
    if not level.get("requests"):
        return "no request completed"
    return f"{level['p50_ms']:.0f} / {level['p99_ms']:.0f} ms, {level['qps']:.1f} QPS"


def markdown(reports: list[dict], machine: dict, wall: float) -> str:
    lines = [f"Serving over loopback (`benchmarks/serve_table.py`, {wall / 60:.1f} min in all). Cells: p50 / p99 "
             "latency, QPS; k=10 items a request, 2 ms queue delay, micro-batches of up to `max batch`.", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; jax {machine['jax']}; "
             f"1-minute load average at the end {machine['load_average']:.1f}.", "",
             "| row | items | max batch | " + " | ".join(f"concurrency {c}" for c in CONCURRENCY)
             + " | errors | warm-up |", "|---|---|---|" + "---|" * len(CONCURRENCY) + "---|---|"]
    for r in reports:
        errors = sum(level["errors"] for level in r["levels"])
        lines.append(f"| {r['label']} | {r['items']:,} | {r['max_batch']} | "
                     + " | ".join(cell(level) for level in r["levels"])
                     + f" | {errors} | {r['startup_seconds']:.0f} s |")
    for r in reports:
        if r.get("soak"):
            s = r["soak"]
            lines += ["", f"Soak ({r['label']}, concurrency {s['concurrency']}, {s['seconds']:.0f} s): "
                      f"{s['requests']:,} requests, {s['errors']} errors, p50 {s.get('p50_ms', 0):.0f} ms, "
                      f"p99 {s.get('p99_ms', 0):.0f} ms, {s.get('qps', 0):.1f} QPS; server RSS "
                      f"{s['rss_first_mb']:.0f} -> {s['rss_last_mb']:.0f} MB ({100 * s['rss_growth']:+.1f}%)."]
    if any(r.get("quick") for r in reports):
        lines += ["", "**--quick: a check that it runs, not a measurement.**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, default=Path("bench_out/serve_bundles"))
    parser.add_argument("--smol-run", type=Path,
                        help="a SmolLM2-135M dual-encoder workdir (e.g. experiments/infonce.gin, 2 steps); needed to "
                             "build the SmolLM2 bundles")
    parser.add_argument("--tiny-steps", type=int, default=60)
    parser.add_argument("--tiny-ranker-steps", type=int, default=60)
    parser.add_argument("--smol-ranker-steps", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=[r[0] for r in ROWS], help="these rows only")
    parser.add_argument("--build-only", action="store_true", help="build the missing bundles, run no row")
    parser.add_argument("--quick", action="store_true", help="every level capped at 40 requests and 5 s")
    parser.add_argument("--out", type=Path, default=Path("bench_out/serve_table"))
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.only or r[0] in args.only]
    bundles = args.bundles.absolute()
    began = time.perf_counter()
    needed = {r[2] for r in rows}
    for family, build in (("tiny", build_tiny), ("smol", build_smol)):
        missing = sorted(b for b in needed if b.startswith(family) and not (bundles / b / "manifest.json").exists())
        if missing:
            print(f"building {', '.join(missing)} into {bundles}", flush=True)
            build(bundles, args)
    print(f"bundles ready after {time.perf_counter() - began:.0f} s", flush=True)
    if args.build_only:
        return
    began = time.perf_counter()
    reports = [bench_row(row, bundles, args.out, args.quick) for row in rows]
    wall = time.perf_counter() - began
    machine = describe("jax", "fastapi", "uvicorn", "httpx2")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_table.json").write_text(json.dumps({"wall_seconds": round(wall, 1), "machine": machine,
                                                           "rows": reports}, indent=1))
    table = markdown(reports, machine, wall)
    (args.out / "serve_table.md").write_text(table)
    print("\n" + table + f"\n{args.out / 'serve_table.json'}, {args.out / 'serve_table.md'}")


if __name__ == "__main__":
    main()
