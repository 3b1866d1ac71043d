"""Cross-encoder scoring throughput: the three paths of ff_jax.rank.cross_encoder on one member.

500 candidates of 64 tokens after a 1,024-token member context, a SmolLM2-135M-shaped model
(random weights, fp32, linear head), this machine:
  (a) naive: each candidate after its own copy of the context (1,088 tokens per candidate);
  (b) cache: the context prefilled once into a KV cache of batch 1, every candidate extending it
      as a read-only shared cache (64 tokens per candidate, plus one prefill);
  (c) rows: multi-candidate rows, the context then `--per_row` candidates under the shared-prefix
      mask (the context is recomputed once per row).
Reported: candidates/s of each (prefill included for b and c), and max |score - naive score|.

Then prefill in parallel with retrieval: ScaNN's top-500 over a random corpus (`--corpus` unit
vectors) for the member, with the context's prefill dispatched first (ff_jax.rank.prefill) against
prefill, retrieval and scoring one after the other. Goal: parallel ≤ max(prefill, retrieval) +
scoring + 10%.

Each figure is the median of `--repeats` timed passes after a warm-up: one call of each compiled
shape (a mode's warm-up scores one batch of candidates, not all of them: at full size a naive pass
takes many minutes on a CPU), so the first timed pass compiles nothing.
Usage: python benchmarks/rank.py [--out bench_out/rank.json] [--small] [--repeats 1] [--naive_candidates N]
`--small` runs tiny shapes (2 layers, 128-token context, 24 candidates of 16 tokens) to check the
script end to end in a minute; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ff_jax.model import Llama, presets
from ff_jax.rank.cross_encoder import CrossEncoder, score_candidates
from ff_jax.rank.prefill import start_prefill
from ff_jax.retrieval.scann_index import ScannIndex
import timing
from machine import describe


def timed(fn, repeats: int, warm_up=None):
    """(median seconds of `repeats` calls of fn after one call of warm_up (default: fn itself), the
    last result)."""
    times, result = timing.repeated(fn, repeats, warm_up)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/rank.json")
    parser.add_argument("--small", action="store_true", help="tiny shapes: checks the script, times nothing")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--candidate_tokens", type=int, default=64)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--per_row", type=int, default=16, help="candidates per row in mode (c)")
    parser.add_argument("--batch", type=int, default=100, help="candidates per call in modes (a) and (b)")
    parser.add_argument("--naive_batch", type=int, default=8, help="candidates per call in mode (a)")
    parser.add_argument("--naive_candidates", type=int, default=0,
                        help="time mode (a) on the first N candidates only (0: all). Its cost is linear in "
                             "the count (each candidate is its own sequence), so the rate holds; the other "
                             "modes are compared with it on those N")
    parser.add_argument("--corpus", type=int, default=200_000, help="items ScaNN retrieves from")
    args = parser.parse_args()
    if args.small:
        args.candidates, args.candidate_tokens, args.context, args.per_row = 24, 16, 128, 8
        args.batch, args.naive_batch, args.corpus = 12, 4, 5_000
        cfg = presets.tiny(vocab_size=49_152)
    else:
        cfg = presets.smollm2_135m()
    model = CrossEncoder(Llama(cfg, rngs=nnx.Rngs(0)), "linear", rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    context = rng.integers(1, cfg.vocab_size, args.context).tolist()
    candidates = [rng.integers(1, cfg.vocab_size, args.candidate_tokens).tolist() for _ in range(args.candidates)]
    budget = args.candidate_tokens

    def run(mode: str, batch: int, count: int = args.candidates):
        return lambda: score_candidates(model, context, candidates[:count], budget, mode=mode, batch=batch,
                                        per_row=args.per_row, context_multiple=64)

    report = {"machine": describe("jax", "scann"), "model": "smollm2_135m shape" if not args.small else "tiny",
              "dtype": cfg.dtype, "candidates": args.candidates, "candidate_tokens": budget,
              "context_tokens": args.context, "per_row": args.per_row, "modes": {}}
    scores = {}
    compared = min(args.naive_candidates or args.candidates, args.candidates)
    report["naive_candidates"] = compared
    for mode, batch in (("naive", args.naive_batch), ("cache", args.batch), ("rows", args.batch)):
        count = compared if mode == "naive" else args.candidates
        # Warm-up: one call's worth of candidates, padded to the same shapes as every timed call.
        seconds, scores[mode] = timed(run(mode, batch, count), args.repeats, warm_up=run(mode, batch, batch))
        report["modes"][mode] = {"seconds": seconds, "candidates": count, "candidates_per_s": count / seconds}
        print(f"{mode:5}: {count / seconds:9.1f} candidates/s ({count} in {seconds:.2f} s)", flush=True)
    for mode in ("cache", "rows"):
        delta = float(np.max(np.abs(scores[mode][:compared] - scores["naive"])))
        report["modes"][mode]["max_abs_delta_vs_naive"] = delta
        report["modes"][mode]["speedup_vs_naive"] = report["modes"][mode]["candidates_per_s"] / \
            report["modes"]["naive"]["candidates_per_s"]
        print(f"{mode:5}: max |Δscore| vs naive {delta:.2e}, {report['modes'][mode]['speedup_vs_naive']:.1f}x naive")

    # Prefill ∥ retrieval + scoring, against the three one after the other.
    corpus = rng.normal(size=(args.corpus, 64)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    index = ScannIndex().build(corpus, np.arange(args.corpus))
    member = corpus[:1] + 0.1 * rng.normal(size=(1, 64)).astype(np.float32)

    def retrieve():
        return index.search(member, args.candidates)

    def prefill_only():
        return jax.block_until_ready(start_prefill(model, context).cache)

    def score_only(pending):
        return pending.score(candidates, budget, batch=args.batch)

    pending = start_prefill(model, context)  # compiles the prefill; scoring was compiled by mode (b)
    jax.block_until_ready(pending.cache)
    compiled = lambda: None  # noqa: E731  (no warm-up needed: every shape below is compiled)
    t_prefill, _ = timed(prefill_only, args.repeats, warm_up=compiled)
    t_retrieval, _ = timed(retrieve, args.repeats)
    t_scoring, _ = timed(lambda: score_only(pending), args.repeats, warm_up=compiled)

    def sequential():
        cache = start_prefill(model, context)
        jax.block_until_ready(cache.cache)
        retrieve()
        return score_only(cache)

    def parallel():
        cache = start_prefill(model, context)  # dispatched; retrieval runs while it computes
        retrieve()
        return score_only(cache)

    t_sequential, _ = timed(sequential, args.repeats, warm_up=compiled)
    t_parallel, parallel_scores = timed(parallel, args.repeats, warm_up=compiled)
    goal = 1.1 * (max(t_prefill, t_retrieval) + t_scoring)
    delta = float(np.max(np.abs(parallel_scores[:compared] - scores["naive"])))
    report["prefill_parallel"] = {"prefill_s": t_prefill, "retrieval_s": t_retrieval, "scoring_s": t_scoring,
                                  "sequential_s": t_sequential, "parallel_s": t_parallel, "goal_s": goal,
                                  "goal_met": t_parallel <= goal, "saved_s": t_sequential - t_parallel,
                                  "max_abs_delta_vs_naive": delta, "corpus": args.corpus}
    print(f"prefill {t_prefill:.3f} s, retrieval {t_retrieval:.3f} s, scoring {t_scoring:.3f} s; "
          f"sequential {t_sequential:.3f} s, parallel {t_parallel:.3f} s (goal ≤ {goal:.3f} s); "
          f"parallel's max |Δscore| vs naive {delta:.2e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
