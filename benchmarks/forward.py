"""Forward throughput: ff_jax (JAX/XLA) against HF transformers' LlamaForCausalLM (PyTorch), fp32, CPU.

Both run the same SmolLM2-135M-shaped weights: a randomly initialised HF model, saved as an HF
directory and loaded into ff_jax with from_pretrained (checked: the two hidden states agree to
~1e-5 before anything is timed).

  (a) a fixed batch of 8 x 512 tokens, last hidden state only (what the dual encoder needs: it
      pools hidden states and never projects to the vocabulary), and again with vocabulary logits;
      ff_jax once more with one dense attention tile (attention_chunk=0), to show what the causal
      query tiles are worth;
  (b) 256 prompts of lognormal length (median ~150, max 1,024 tokens). HF runs them padded, 8
      prompts per batch, both in arrival order and sorted by length (HF's best simple option);
      ff_jax packs them into rows (segment ids + positions that restart per prompt), first fit
      decreasing, rows of 512 for prompts up to 512 tokens and of 1,024 for longer ones. The
      figure is effective throughput: real (non-pad) tokens per second.

Timed calls alternate between the libraries so that load from other processes hits both alike;
each figure is the median of the timed passes after a warm-up (ff_jax: compile). Both use every
core: torch.set_num_threads(cores), and XLA's CPU client runs one thread per core.
Usage: python benchmarks/forward.py [--out bench_out/forward.json] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers
from flax import nnx
from tqdm.auto import tqdm

from ff_jax.data.packing import RowPacker, RowSpec
from ff_jax.model import Llama, LlamaConfig, from_pretrained, presets
from ff_jax.model.hf_checkpoint import config_to_hf
import timing
from machine import describe


# --------------------------------------------------------------------------- the two models


def hf_config(cfg: LlamaConfig) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(**config_to_hf(cfg, "float32"))


def matching_models(cfg: LlamaConfig, seed: int) -> tuple[transformers.LlamaForCausalLM, Llama]:
    """A randomly initialised HF model, and ff_jax's loaded from it through an HF directory."""
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = from_pretrained(tmp).model
    return hf, model


def with_config(model: Llama, **changes) -> Llama:
    """The same weights in a model built with some config fields changed (for an ablation)."""
    other = nnx.eval_shape(lambda: Llama(model.config.replace(**changes), rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    return other


class JaxForward:
    """The model as one jitted pure function of (params, tokens, segment_ids, positions)."""

    def __init__(self, model: Llama):
        graphdef, self.state = nnx.split(model)

        def forward(state, tokens, segment_ids, positions, compute_logits):
            out = nnx.merge(graphdef, state)(tokens, segment_ids=segment_ids, positions=positions,
                                             compute_logits=compute_logits)
            return out.logits if compute_logits else out.hidden

        self._jitted = jax.jit(forward, static_argnames="compute_logits")

    def __call__(self, tokens, segment_ids=None, positions=None, compute_logits=False) -> jax.Array:
        return self._jitted(self.state, tokens, segment_ids, positions, compute_logits).block_until_ready()


def hf_forward(hf, tokens: np.ndarray, attention_mask: np.ndarray | None = None, logits: bool = False):
    """HF at its fastest here: inference mode, no KV cache, SDPA attention."""
    with torch.inference_mode():
        ids = torch.from_numpy(tokens).long()
        mask = None if attention_mask is None else torch.from_numpy(attention_mask).long()
        if logits:
            return hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return hf.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


# --------------------------------------------------------------------------- workload (b)


def prompt_lengths(count: int, median: float, sigma: float, max_len: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.normal(np.log(median), sigma, count))
    return np.clip(np.round(lengths), 8, max_len).astype(np.int64)


def padded_batches(prompts: list[np.ndarray], batch_size: int, sort: bool) -> list[tuple]:
    """HF batches: (tokens, attention_mask), right-padded to the longest prompt of each batch."""
    order = np.argsort([len(p) for p in prompts], kind="stable") if sort else np.arange(len(prompts))
    batches = []
    for start in range(0, len(prompts), batch_size):
        group = [prompts[i] for i in order[start:start + batch_size]]
        width = max(len(p) for p in group)
        tokens = np.zeros((len(group), width), np.int32)
        mask = np.zeros((len(group), width), np.int32)
        for row, p in enumerate(group):
            tokens[row, :len(p)], mask[row, :len(p)] = p, 1
        batches.append((tokens, mask))
    return batches


def packed_calls(prompts: list[np.ndarray], row_lengths: list[int], tokens_per_call: int) -> list[tuple]:
    """ff_jax calls: (tokens, segment_ids, positions) [tokens_per_call // L, L], first fit decreasing.

    Attention work grows with the row length, so a few long prompts should not make every row
    long. Longest rows first: a row length gets whole calls' worth of the rows that the prompts too
    long for the next shorter length need, the space left in them is filled with shorter prompts,
    and the rest goes on to shorter rows. Empty rows (segment id 0) top up a last call, so there is
    one shape, compiled once, per row length."""
    lengths = sorted(row_lengths, reverse=True)
    longest = max(len(p) for p in prompts)
    if longest > lengths[0]:
        raise ValueError(f"--row-lengths: the longest prompt ({longest} tokens) does not fit rows of {lengths[0]}")
    remaining = sorted(prompts, key=len, reverse=True)
    calls = []
    for i, length in enumerate(lengths):
        shorter = lengths[i + 1] if i + 1 < len(lengths) else 0
        must = [p for p in remaining if len(p) > shorter]
        if not must:
            continue
        rows_per_call = max(tokens_per_call // length, 1)
        counter = RowPacker(RowSpec(rows=len(must), length=length, max_segments=length))
        for p in must:
            counter.place([p])
        needed = int((counter.arrays(0)[1] != 0).any(axis=1).sum())
        rows = -(-needed // rows_per_call) * rows_per_call
        packer = RowPacker(RowSpec(rows=rows, length=length, max_segments=length))
        # `must` comes first in `remaining` (decreasing length), so it lands as in the count above.
        remaining = [p for p in remaining if packer.place([p]) is None]
        tokens, segments, positions = packer.arrays(pad_id=0)
        for start in range(0, rows, rows_per_call):
            calls.append(tuple(a[start:start + rows_per_call] for a in (tokens, segments, positions)))
    return calls


# --------------------------------------------------------------------------- timing


def interleaved(cases: dict, repeats: int, desc: str) -> dict[str, list[float]]:
    """Runs each case once per repeat, alternating, so background load hits all cases alike."""
    seconds = {name: [] for name in cases}
    for _ in tqdm(range(repeats), desc=desc):
        for name, fn in cases.items():
            seconds[name].append(timing.seconds(fn))
    return seconds


def summary(seconds: list[float], tokens: int) -> dict:
    median = statistics.median(seconds)
    # The minimum is kept too: on a shared machine it is the run least disturbed by other load.
    return {"seconds": [round(s, 3) for s in seconds], "median_s": round(median, 3), "min_s": round(min(seconds), 3),
            "tokens": tokens, "tokens_per_s": round(tokens / median, 1)}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench_out/forward.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case of (a); median reported")
    parser.add_argument("--repeats-variable", type=int, default=2,
                        help="timed passes per case of (b), each a few minutes on 2 cores")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--median-length", type=float, default=150)
    parser.add_argument("--sigma", type=float, default=0.7, help="lognormal shape of the prompt lengths")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--hf-batch", type=int, default=8, help="prompts per padded HF batch")
    parser.add_argument("--row-lengths", default="512,1024",
                        help="ff_jax packed row lengths; each prompt goes to the shortest that holds it")
    parser.add_argument("--tokens-per-call", type=int, default=4096, help="ff_jax rows x row length per call")
    parser.add_argument("--quick", action="store_true", help="64 prompts, 1 repeat: a smoke run")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin the process to this many cores (both libraries then use them); 0 = all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.repeats, args.repeats_variable = 64, 1, 1

    if args.threads:
        # Before the first jax computation: XLA sizes its thread pool from the affinity mask.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # XLA's CPU client already uses one thread per core
    hf, model = matching_models(presets.smollm2_135m(), args.seed)
    cfg = model.config
    ours = JaxForward(model)
    dense = JaxForward(with_config(model, attention_chunk=0))  # ablation: one dense attention tile
    info = describe("jax", "torch", "transformers") | {"threads": threads,
                                                        "hf_attention": hf.config._attn_implementation}
    print(f"{info['cpu']}, {threads} cores, {info['memory_gb']} GB; python {info['python']}, jax "
          f"{info['jax']}, torch {info['torch']}, transformers {info['transformers']}")

    rng = np.random.default_rng(args.seed)
    results: dict = {"machine": info, "args": vars(args)}

    # (a) fixed batch 8 x 512.
    fixed = rng.integers(0, cfg.vocab_size, (8, 512)).astype(np.int32)
    start = time.perf_counter()
    hidden = np.asarray(ours(fixed))
    ours(fixed, compute_logits=True)
    results["max_abs_diff_dense_attention"] = float(np.abs(np.asarray(dense(fixed)) - hidden).max())
    results["compile_s"] = {"fixed": round(time.perf_counter() - start, 1)}
    ref = hf_forward(hf, fixed).numpy()
    hf_forward(hf, fixed, logits=True)  # torch warm-up
    results["max_abs_diff_hidden"] = float(np.abs(hidden - ref).max())
    print(f"parity on (a): max |hidden_ff - hidden_hf| = {results['max_abs_diff_hidden']:.2e}")
    if results["max_abs_diff_hidden"] > 1e-3:
        raise RuntimeError("ff_jax and HF disagree: the weight copy or the model is wrong; timing would be meaningless")
    secs = interleaved({
        "ff_jax hidden": lambda: ours(fixed),
        "ff_jax hidden, dense attention": lambda: dense(fixed),
        "hf hidden": lambda: hf_forward(hf, fixed),
        "ff_jax logits": lambda: ours(fixed, compute_logits=True),
        "hf logits": lambda: hf_forward(hf, fixed, logits=True),
    }, args.repeats, "(a) 8x512")
    results["fixed"] = {name: summary(s, fixed.size) for name, s in secs.items()}

    # (b) variable-length prompts: HF padded per batch vs ff_jax packed rows.
    lengths = prompt_lengths(args.prompts, args.median_length, args.sigma, args.max_length, args.seed)
    prompts = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in lengths]
    real = int(lengths.sum())
    hf_sorted = padded_batches(prompts, args.hf_batch, sort=True)
    hf_arrival = padded_batches(prompts, args.hf_batch, sort=False)
    calls = packed_calls(prompts, [int(n) for n in args.row_lengths.split(",")], args.tokens_per_call)
    slots = {"ff_jax packed": sum(c[0].size for c in calls), "hf sorted": sum(t.size for t, _ in hf_sorted),
             "hf arrival order": sum(t.size for t, _ in hf_arrival)}
    start = time.perf_counter()
    packed_hidden = np.asarray(ours(*calls[0]))
    for call in {c[0].shape: c for c in calls[1:]}.values():  # compile the other row lengths
        ours(*call)
    results["compile_s"]["packed"] = round(time.perf_counter() - start, 1)
    hf_forward(hf, *hf_sorted[-1])  # torch warm-up at the longest shape
    # Parity inside packed rows: the first row's prompts against HF running each alone.
    tokens, segments, _ = calls[0]
    worst = 0.0
    for seg in np.unique(segments[0][segments[0] > 0])[:3]:
        where = segments[0] == seg
        alone = hf_forward(hf, tokens[0][where][None]).numpy()[0]
        worst = max(worst, float(np.abs(packed_hidden[0][where] - alone).max()))
    results["max_abs_diff_packed"] = worst
    print(f"parity on (b): max |packed segment - HF alone| = {worst:.2e}")

    def run_all(batches, fn):
        return lambda: [fn(*b) for b in batches]

    secs = interleaved({
        "ff_jax packed": run_all(calls, ours),
        "hf sorted": run_all(hf_sorted, lambda t, m: hf_forward(hf, t, m)),
        "hf arrival order": run_all(hf_arrival, lambda t, m: hf_forward(hf, t, m)),
    }, args.repeats_variable, f"(b) {args.prompts} prompts")
    results["variable"] = {
        name: summary(s, real) | {"computed_slots": slots[name], "pad_fraction": round(1 - real / slots[name], 3),
                                  "calls": len(calls) if name.startswith("ff_jax") else len(hf_sorted)}
        for name, s in secs.items()}
    results["variable_lengths"] = {"median": float(np.median(lengths)), "mean": float(lengths.mean()),
                                   "max": int(lengths.max()), "total_tokens": real}
    results["machine"]["load_average_end"] = os.getloadavg()[0]

    fx, var = results["fixed"], results["variable"]
    results["ratios"] = {
        "fixed_hidden": round(fx["ff_jax hidden"]["tokens_per_s"] / fx["hf hidden"]["tokens_per_s"], 2),
        "query_tiles_vs_dense_attention": round(
            fx["ff_jax hidden"]["tokens_per_s"] / fx["ff_jax hidden, dense attention"]["tokens_per_s"], 2),
        "fixed_logits": round(fx["ff_jax logits"]["tokens_per_s"] / fx["hf logits"]["tokens_per_s"], 2),
        "variable_vs_hf_sorted": round(var["ff_jax packed"]["tokens_per_s"] / var["hf sorted"]["tokens_per_s"], 2),
        "variable_vs_hf_arrival": round(
            var["ff_jax packed"]["tokens_per_s"] / var["hf arrival order"]["tokens_per_s"], 2),
    }
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def print_table(results: dict) -> None:
    print(f"\n{'case':44s} {'median s':>9s} {'tokens/s':>9s} {'pad':>6s}")
    for section, label in (("fixed", "(a) 8x512"), ("variable", "(b) variable")):
        for name, r in results[section].items():
            pad = f"{r['pad_fraction']:.0%}" if "pad_fraction" in r else ""
            print(f"{label + ' ' + name:44s} {r['median_s']:9.2f} {r['tokens_per_s']:9.1f} {pad:>6s}")
    print("ratios (ff_jax / HF, effective tokens/s): "
          + ", ".join(f"{k} {v:.2f}x" for k, v in results["ratios"].items()))


if __name__ == "__main__":
    main()
