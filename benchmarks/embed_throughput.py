"""Embedding throughput: `ff-jax embed` against HF transformers mean-pooled embeddings, fp32, CPU.

What a user would compare: the MovieLens-100k item corpus (1,682 item prompts) and a sample of
test-member prompts, embedded with SmolLM2-135M (the shipped GGUF) and mean pooling.

  ff_jax: the code path of `ff-jax embed --gin_file=experiments/infonce.gin --gin.DATASET=movielens_feed
          --gin.DATASET_CONFIG=100k --gin.EmbedConfig.zero_shot=True`: the gin files are parsed as
          the CLI parses them, the model is built by embed_job.load_model (DualEncoder around the
          pretrained backbone, prompt markers added to the tokenizer and the vocabulary), batches
          come from ff_jax.data.pipeline.embedding_batches with the run file's BatchConfig made for
          embedding (`BatchConfig.for_embedding`: rows as long as the tower's budget, as many
          prompts a row as fit), and embed_job.jit_encoder is the jitted step. Only the writing of
          the shards to disk is left out. "ff_jax training rows" is the same with the training
          batch's rows (what `ff-jax embed` used before); `--ff-batch` adds a case with other
          BatchConfig fields.
  HF:     transformers' LlamaModel loaded from the same weights (ff_jax.model.save_pretrained of
          the backbone above, markers' rows included), SDPA attention, inference mode; prompts
          sorted by length and right-padded per batch of `--hf-batch`; mean over non-pad tokens.

Both embed the same token ids: the HF inputs are cut out of ff_jax's packed batches, so the
comparison is the model side only (tokenisation and packing are done before timing on both sides).
Before timing, each prompt's two embeddings must agree (cosine > 0.999). Timed passes alternate
between the cases so that load from other processes hits them alike; each figure is the median of
`--repeats` passes after a warm-up (ff_jax: compile). The figure is real (non-pad) tokens per
second. Both use every core: torch.set_num_threads(cores); XLA's CPU client runs one thread per core.

Usage: python benchmarks/embed_throughput.py [--items 1682] [--members 32] [--repeats 3]
       [--out benchmarks/results/embed_throughput_cpu_2core.json]   (--quick: 64 + 16 prompts, 1 repeat)
The defaults (the whole corpus, 32 members: ~66k tokens a pass, 12 passes) take about half an hour
on 2 idle cores; member prompts are ~500 tokens each (cut to the run file's 512-token budget).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from tqdm.auto import tqdm

from ff_jax.data.pipeline import embedding_batches
from ff_jax.model import save_pretrained
from ff_jax.model.sharding import batch_shards, logical_axis_rules
from ff_jax.retrieval import embed_job
from ff_jax.train.run import Run
import timing
from machine import describe

GIN_FILES = ["experiments/infonce.gin"]


# --------------------------------------------------------------------------- inputs


def prompts_of(batches, per_row: int) -> dict[str, np.ndarray]:
    """id -> the token ids ff_jax embedded for it, cut out of the packed batches (slot = row * S +
    segment - 1, S = `per_row`)."""
    out = {}
    for batch in batches:
        tokens, segments = np.asarray(batch.tokens), np.asarray(batch.segment_ids)
        slots, mask = np.asarray(batch.slot), np.asarray(batch.example_mask)
        shards, width = slots.shape
        for n in range(shards):
            for j in range(width):
                if mask[n, j] > 0:
                    row, seg = divmod(int(slots[n, j]), per_row)
                    out[batch.ids[n * width + j]] = tokens[n, row][segments[n, row] == seg + 1]
    return out


def padded_batches(prompts: list[np.ndarray], batch_size: int, pad_id: int) -> list[tuple]:
    """(order, tokens, attention_mask): prompts sorted by length, right-padded to each batch's longest."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    batches = []
    for start in range(0, len(prompts), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        tokens = np.full((len(idx), width), pad_id, np.int64)
        mask = np.zeros((len(idx), width), np.int64)
        for row, i in enumerate(idx):
            tokens[row, :len(prompts[i])], mask[row, :len(prompts[i])] = prompts[i], 1
        batches.append((idx, torch.from_numpy(tokens), torch.from_numpy(mask)))
    return batches


def hf_embed(model, batches, count: int) -> np.ndarray:
    """Mean over each prompt's non-pad tokens of the last hidden state, [count, hidden]."""
    out = np.zeros((count, model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for idx, tokens, mask in batches:
            hidden = model(input_ids=tokens, attention_mask=mask, use_cache=False).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            out[idx] = ((hidden * m).sum(1) / m.sum(1)).numpy()
    return out


def ff_embed(encode, batches, order: dict[str, int], width: int) -> np.ndarray:
    """embed_job's loop without the shard writer: each batch through the jitted step, rows by id."""
    out = np.zeros((len(order), width), np.float32)
    for batch in batches:
        vectors = np.asarray(encode(batch))
        keep = np.asarray(batch.example_mask).reshape(-1) > 0
        out[[order[i] for i, k in zip(batch.ids, keep) if k]] = vectors[keep]
    return out


# --------------------------------------------------------------------------- timing


def summary(seconds: list[float], tokens: int) -> dict:
    median = statistics.median(seconds)
    return {"seconds": [round(s, 3) for s in seconds], "median_s": round(median, 3), "min_s": round(min(seconds), 3),
            "tokens": tokens, "tokens_per_s": round(tokens / median, 1)}


def parse_fields(text: str) -> dict:
    """"a=1,b=2" -> {"a": 1, "b": 2} (BatchConfig fields, ints)."""
    return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="/tmp/tfds", help="prepared TFDS datasets (MovieLens built on first use)")
    parser.add_argument("--items", type=int, default=1682, help="corpus items to embed (the first N; 1,682 = all)")
    parser.add_argument("--members", type=int, default=32, help="test members to embed (the first N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per case; median reported")
    parser.add_argument("--hf-batch", type=int, default=32, help="prompts per length-sorted padded HF batch")
    parser.add_argument("--ff-batch", default="",
                        help="one more ff_jax case with these BatchConfig fields, e.g. 'item_rows=1'")
    parser.add_argument("--gin", action="append", default=[], help="extra --gin.NAME=VALUE bindings (NAME=VALUE)")
    parser.add_argument("--out", default="benchmarks/results/embed_throughput_cpu_2core.json")
    parser.add_argument("--no-training-rows", action="store_true",
                        help="leave out the 'ff_jax training rows' case (the slowest; only the before/after story)")
    parser.add_argument("--quick", action="store_true", help="64 items + 16 members, 1 repeat: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.items, args.members, args.repeats = 64, 16, 1

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    info = describe("jax", "torch", "transformers") | {"threads": threads}
    print(f"{info['cpu']}, {threads} cores, {info['memory_gb']} GB, load {info['load_average']:.1f}; jax "
          f"{info['jax']}, torch {info['torch']}, transformers {info['transformers']}")
    bindings = [f"DATA_DIR={args.data_dir}", "DATASET=movielens_feed", "DATASET_CONFIG=100k", *args.gin]
    results: dict = {"machine": info, "args": vars(args), "gin_files": GIN_FILES, "gin_bindings": bindings}

    with tempfile.TemporaryDirectory() as tmp:
        # ----- ff_jax: what `ff-jax embed --gin.EmbedConfig.zero_shot=True` builds.
        start = time.perf_counter()
        run = Run.open(tmp, GIN_FILES, bindings)  # a workdir without config.gin: the gin files describe the model
        data, rules = run.spec.data, logical_axis_rules()
        mesh = run.spec.mesh_factory()
        model, tokenizer, _ = embed_job.load_model(run, True, None, mesh, rules)
        results["load_s"] = round(time.perf_counter() - start, 1)
        num_shards = batch_shards(mesh, rules)
        # case -> tower -> BatchConfig. "ff_jax" is what `ff-jax embed` uses (the run's BatchConfig
        # made for embedding: rows as long as the tower's budget, filled with as many prompts as fit).
        configs = {"ff_jax": {t: data.batch.for_embedding(t) for t in ("item", "member")}}
        if not args.no_training_rows:
            configs["ff_jax training rows"] = {t: data.batch for t in ("item", "member")}
        if args.ff_batch:
            extra = dataclasses.replace(data.batch, **parse_fields(args.ff_batch))
            configs[f"ff_jax {args.ff_batch}"] = {t: extra for t in ("item", "member")}
        results["batch_configs"] = {name: {t: dataclasses.asdict(c) for t, c in per_tower.items()}
                                    for name, per_tower in configs.items()}

        towers = {"item": ("movielens_feed_corpus", "corpus", args.items),
                  "member": ("movielens_feed", "test", args.members)}
        cases: dict[str, dict] = {name: {} for name in configs}  # case -> tower -> (encode, batches)
        prompts: dict[str, dict[str, np.ndarray]] = {}
        for tower, (builder, split, count) in towers.items():
            sources, fmt, _ = data.open_dataset(builder)
            records = sources[split]
            records = embed_job.RecordSlice(records, 0, min(count, len(records)))
            for name, per_tower in configs.items():
                config = per_tower[tower]
                segments = config.max_segments if config.mode == "packed" else 1
                batches = list(embedding_batches(records, tokenizer=tokenizer, fmt=fmt, config=config, tower=tower,
                                                 num_shards=num_shards, shard_index=0, shard_count=1,
                                                 read_threads=data.read_threads))
                got = prompts_of(batches, segments)
                if tower in prompts and any(not np.array_equal(got[k], v) for k, v in prompts[tower].items()):
                    raise RuntimeError(f"{name}: other token ids than the first case for the {tower} tower")
                prompts.setdefault(tower, got)
                encode = embed_job.jit_encoder(model, mesh, rules, segments)
                cases[name][tower] = (encode, batches)
        ids = {tower: sorted(p) for tower, p in prompts.items()}
        lengths = {tower: np.array([len(prompts[tower][i]) for i in ids[tower]]) for tower in ids}
        real = int(sum(v.sum() for v in lengths.values()))
        results["prompts"] = {tower: {"count": len(ids[tower]), "tokens": int(v.sum()), "median": float(np.median(v)),
                                      "mean": round(float(v.mean()), 1), "max": int(v.max())}
                              for tower, v in lengths.items()}
        print("prompts: " + ", ".join(f"{t} {r['count']} (median {r['median']:.0f}, max {r['max']} tokens)"
                                      for t, r in results["prompts"].items()) + f"; {real} tokens in all")

        # ----- HF: the same weights (the grown vocabulary included), the same token ids.
        hf_dir = Path(tmp) / "hf"
        save_pretrained(model.backbone, hf_dir)
        hf = transformers.LlamaModel.from_pretrained(hf_dir, torch_dtype=torch.float32,
                                                     attn_implementation="sdpa").eval()
        info["hf_attention"] = hf.config._attn_implementation
        hf_batches = {t: padded_batches([prompts[t][i] for i in ids[t]], args.hf_batch, tokenizer.pad_id)
                      for t in ids}

    order = {t: {i: k for k, i in enumerate(ids[t])} for t in ids}
    width = model.embedding_dim

    def run_ff(name):
        return {t: ff_embed(encode, batches, order[t], width) for t, (encode, batches) in cases[name].items()}

    def run_hf():
        return {t: hf_embed(hf, hf_batches[t], len(ids[t])) for t in ids}

    # Warm-up (ff_jax compiles one shape per tower and case) and the parity check on its outputs.
    start = time.perf_counter()
    ff_out = {name: run_ff(name) for name in cases}
    results["compile_s"] = round(time.perf_counter() - start, 1)
    hf_out = run_hf()
    parity = {}
    for name, out in ff_out.items():
        a, b = np.concatenate([out[t] for t in ids]), np.concatenate([hf_out[t] for t in ids])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        parity[name] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a - b).max()),
                        "max_abs_value": float(np.abs(b).max())}
        print(f"parity {name} vs HF: min cosine {cos.min():.6f}, max |delta| {parity[name]['max_abs_diff']:.2e}")
        if cos.min() <= 0.999:
            raise RuntimeError(f"{name} and HF embeddings disagree (min cosine {cos.min():.6f}): timing would be meaningless")
    results["parity"] = parity

    slots = {name: sum(np.asarray(b.tokens).size for _, batches in towers_.values() for b in batches)
             for name, towers_ in cases.items()}
    slots["hf"] = sum(int(t.numel()) for t in ids for _, t, _ in hf_batches[t])
    calls = {name: sum(len(batches) for _, batches in towers_.values()) for name, towers_ in cases.items()}
    calls["hf"] = sum(len(hf_batches[t]) for t in ids)

    timers = {name: (lambda name=name: run_ff(name)) for name in cases} | {"hf": run_hf}
    seconds = {name: [] for name in timers}
    for _ in tqdm(range(args.repeats), desc="timed passes"):
        for name, fn in timers.items():
            seconds[name].append(timing.seconds(fn))
    results["cases"] = {name: summary(s, real) | {"computed_slots": slots[name], "calls": calls[name],
                                                  "pad_fraction": round(1 - real / slots[name], 3)}
                        for name, s in seconds.items()}
    hf_rate = results["cases"]["hf"]["tokens_per_s"]
    results["ratios"] = {name: round(results["cases"][name]["tokens_per_s"] / hf_rate, 2) for name in cases}
    info["load_average_end"] = os.getloadavg()[0]

    print(f"\n{'case':40s} {'median s':>9s} {'tokens/s':>9s} {'pad':>6s} {'calls':>6s}")
    for name, r in results["cases"].items():
        print(f"{name:40s} {r['median_s']:9.2f} {r['tokens_per_s']:9.1f} {r['pad_fraction']:6.0%} {r['calls']:6d}")
    print("ff_jax / HF (real tokens/s): " + ", ".join(f"{k} {v:.2f}x" for k, v in results["ratios"].items())
          + f"; load average {info['load_average']:.1f} -> {info['load_average_end']:.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
