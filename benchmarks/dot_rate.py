"""The fp32 matrix-product rate of this CPU in jax and in torch: the ceiling under both sides of
embed_throughput.py, which spend nearly all their time in such products.

One product of SmolLM2-135M's MLP shape (tokens × 576 @ 576 × 1536), jitted in jax and in inference
mode in torch, both on every core. Cases alternate (`--rounds` times) so that load from other
processes hits them alike; each figure is the median GFLOP/s of `--repeats` calls after a warm-up.
jax runs in one child process per XLA_FLAGS setting (XLA reads them once): XLA's own dot, oneDNN
and XNNPACK.

Usage: python benchmarks/dot_rate.py [--tokens 4096] [--rounds 2] [--out bench_out/dot_rate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import timing
from machine import describe

JAX_FLAGS = {"jax (XLA dot)": "", "jax (oneDNN)": "--xla_cpu_use_onednn=true",
             "jax (XNNPACK)": "--xla_cpu_use_xnnpack=true"}


def rate(library: str, tokens: int, repeats: int) -> float:
    """Median GFLOP/s of one tokens×576 @ 576×1536 product in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((tokens, 576), dtype=np.float32)
    b = rng.random((576, 1536), dtype=np.float32)
    if library == "torch":
        import torch

        torch.set_num_threads(os.cpu_count())
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)

        def call():
            with torch.inference_mode():
                ta @ tb
    else:
        import jax

        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        product = jax.jit(lambda x, y: x @ y)

        def call():
            product(ja, jb).block_until_ready()
    return 2 * tokens * 576 * 1536 / statistics.median(timing.repeated(call, repeats)[0]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench_out/dot_rate.json")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(rate(args.child, args.tokens, args.repeats))
        return
    cases = {**{name: ("jax", flags) for name, flags in JAX_FLAGS.items()}, "torch": ("torch", "")}
    figures: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (library, flags) in cases.items():
            env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip())
            done = subprocess.run([sys.executable, __file__, f"--child={library}", f"--tokens={args.tokens}",
                                   f"--repeats={args.repeats}"], env=env, capture_output=True, text=True, check=True)
            figures[name].append(round(float(done.stdout.split()[-1]), 1))
    results = {"machine": describe(), "args": vars(args), "gflops": figures}
    for name, values in figures.items():
        print(f"{name:16s} GFLOP/s {values}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
