"""Serving latency and throughput over loopback: `ff-jax serve` under an asyncio HTTP client.

The server runs as its own process (`ff-jax serve --bundle=...` on 127.0.0.1, a fresh state
folder), started and warmed up (/readyz) before anything is timed. Each concurrency level runs
`--concurrency` client tasks, each sending POST /v1/recommend one after another (keep-alive
connections), until `--requests` requests or `--seconds` have passed, after `--warmup` untimed
requests. Members are drawn from the bundle's catalogue with a fixed seed: a short profile and
1-8 recent items by catalogue id. Figures per level: p50 / p99 latency (send to full response),
QPS, non-200 answers. `--soak S` then holds the last concurrency for S seconds and samples the
server's resident memory every second: growth = last minute's mean RSS over the first minute's
after warm-up (the target is <= 10% with 0 errors).

The rows the issue asks for: the tiny and the SmolLM2-135M bundles, each exported without and with
`--ranker`, the ranker bundles run twice (prefill overlapped with retrieval, and
`--sequential-prefill`); one run of this script per row (benchmarks/serve_table.py runs them all).
`--requests`, `--seconds` and `--warmup` take one value, or one per concurrency level (a slow model
needs few requests at concurrency 1 and at least one full batch at 64). The server's stderr goes to
a file in its state folder (a pipe nobody reads would fill and stall it in a long soak).

Usage: python benchmarks/serve.py --bundle=bundles/x [--concurrency 1 8 64] [--requests 2000]
       [--seconds 60] [--soak 300] [--max-batch 64] [--delay-ms 2] [--sequential-prefill]
       [--length-buckets 64 256] [--k 10] [--timeout 60] [--compile-cache DIR]
       [--label NAME] [--out bench_out/serve.json]
       (--quick: at most 40 requests and 5 s a level, a 3 s soak if any: checks that it runs)
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import pandas as pd

from machine import describe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def members(bundle: Path, count: int, k: int, seed: int = 0) -> list[dict]:
    """Request bodies: a short profile and 1-8 recent catalogue items, newest first."""
    ids = pd.read_parquet(bundle / "catalogue.parquet", columns=["item_id"])["item_id"].tolist()
    rng = random.Random(seed)
    return [{"member": {"profile": {}, "history": [{"item_id": i} for i in rng.sample(ids, rng.randint(1, 8))]},
             "k": k} for _ in range(count)]


def start_server(args, port: int, state: str) -> tuple[subprocess.Popen, float]:
    """The server process, once /readyz says 200, and the seconds that took (warm-up compiles)."""
    buckets = ", ".join(map(str, args.length_buckets))
    command = [sys.executable, "-m", "ff_jax.cli", "serve", f"--bundle={args.bundle}", f"--workdir={state}",
               f"--port={port}", f"--gin.ServerConfig.max_batch={args.max_batch}",
               f"--gin.ServerConfig.max_queue_delay_ms={args.delay_ms}",
               f"--gin.ServerConfig.length_buckets=({buckets},)",
               f"--gin.ServerConfig.overlap_prefill={not args.sequential_prefill}"]
    env = dict(os.environ)
    if args.compile_cache:  # XLA programs compiled by an earlier server of the same bundle load from disk
        env.update(JAX_COMPILATION_CACHE_DIR=str(args.compile_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = Path(state) / "server.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    began = time.monotonic()
    while time.monotonic() < began + args.startup_seconds:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return process, time.monotonic() - began
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    raise SystemExit(f"the server was not ready within {args.startup_seconds} s: {log.read_text()[-3000:]}")


async def load(url: str, bodies: list[dict], concurrency: int, requests: int, seconds: float,
               on_tick=None, timeout: float = 60) -> dict:
    """`concurrency` tasks sending requests back to back until `requests` are done or `seconds` pass."""
    latencies, failures = [], 0
    sent = 0
    stop = time.perf_counter() + seconds
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        async def worker():
            nonlocal sent, failures
            while sent < requests and time.perf_counter() < stop:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/recommend", json=body)
                    ok = response.status_code == 200
                except httpx2.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                failures += not ok

        async def ticker():
            while time.perf_counter() < stop and sent < requests:
                on_tick()
                await asyncio.sleep(1.0)

        began = time.perf_counter()
        tasks = [worker() for _ in range(concurrency)] + ([ticker()] if on_tick else [])
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    if not latencies:
        return {"concurrency": concurrency, "requests": 0, "errors": 0, "seconds": round(elapsed, 2)}
    ordered = sorted(latencies)
    return {"concurrency": concurrency, "requests": len(latencies), "errors": failures,
            "seconds": round(elapsed, 2), "qps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--requests", type=int, nargs="+", default=[2000], help="most requests per level")
    parser.add_argument("--seconds", type=float, nargs="+", default=[60], help="most seconds per level")
    parser.add_argument("--warmup", type=int, nargs="+", default=[50], help="untimed requests before each level")
    parser.add_argument("--soak", type=float, default=0, help="seconds at the last concurrency (0: none)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--length-buckets", type=int, nargs="+", default=[64, 256],
                        help="ServerConfig.length_buckets (the token budget is always added)")
    parser.add_argument("--k", type=int, default=10, help="items asked for per request")
    parser.add_argument("--timeout", type=float, default=60, help="seconds a request may take before it counts "
                        "as an error")
    parser.add_argument("--compile-cache", type=Path, default=None,
                        help="a JAX persistent compilation cache folder for the server (warm-up only)")
    parser.add_argument("--sequential-prefill", action="store_true",
                        help="a ranker bundle: wait for the member's prefill before retrieval (default: overlapped)")
    parser.add_argument("--startup-seconds", type=float, default=900)
    parser.add_argument("--label", default="", help="a name for this configuration in the table")
    parser.add_argument("--out", type=Path, default=Path("bench_out/serve.json"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    levels_count = len(args.concurrency)
    per_level = {}
    for name in ("requests", "seconds", "warmup"):
        values = getattr(args, name)
        if len(values) not in (1, levels_count):
            parser.error(f"--{name}: give one value or one per concurrency level ({levels_count})")
        per_level[name] = values * levels_count if len(values) == 1 else values
    if args.quick:
        per_level = {"requests": [min(r, 40) for r in per_level["requests"]],
                     "seconds": [min(s, 5) for s in per_level["seconds"]],
                     "warmup": [min(w, 5) for w in per_level["warmup"]]}
        args.soak = min(args.soak, 3)

    bodies = members(args.bundle, 512, args.k)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as state:
        server, startup = start_server(args, port, state)
        try:
            levels = []
            for i, concurrency in enumerate(args.concurrency):
                asyncio.run(load(url, bodies, concurrency, per_level["warmup"][i], per_level["seconds"][i],
                                 timeout=args.timeout))
                levels.append(asyncio.run(load(url, bodies, concurrency, per_level["requests"][i],
                                               per_level["seconds"][i], timeout=args.timeout)))
                print(json.dumps(levels[-1]), flush=True)
            soak = None
            if args.soak:
                samples = []
                result = asyncio.run(load(url, bodies, args.concurrency[-1], sys.maxsize, args.soak,
                                          on_tick=lambda: samples.append(rss_mb(server.pid)), timeout=args.timeout))
                window = max(1, min(60, len(samples) // 2))
                first, last = statistics.mean(samples[:window]), statistics.mean(samples[-window:])
                soak = {**result, "rss_first_mb": round(first, 1), "rss_last_mb": round(last, 1),
                        "rss_growth": round(last / first - 1, 4), "rss_samples_mb": [round(s, 1) for s in samples]}
                print(json.dumps({k: v for k, v in soak.items() if k != "rss_samples_mb"}), flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    report = {"label": args.label, "bundle": str(args.bundle), "model": manifest["model"]["backbone"],
              "items": manifest["items"], "ranker": "ranker" in manifest["model"],
              "prefill": "sequential" if args.sequential_prefill else "overlapped",
              "max_batch": args.max_batch, "delay_ms": args.delay_ms, "length_buckets": args.length_buckets,
              "k": args.k, "bounds": per_level, "quick": args.quick, "startup_seconds": round(startup, 1),
              "levels": levels, "soak": soak,
              "machine": describe("jax", "fastapi", "uvicorn", "httpx2")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"| {args.label or args.bundle.name} | " + " | ".join(
        f"c={lv['concurrency']}: p50 {lv.get('p50_ms')} ms, p99 {lv.get('p99_ms')} ms, {lv.get('qps')} QPS, "
        f"{lv['errors']} errors" for lv in levels) + " |")


if __name__ == "__main__":
    main()
