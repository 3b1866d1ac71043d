"""Data pipeline throughput and padding waste.

Stage rates are items per CPU-second of this process (single-threaded stages: the rate of one
free core, unaffected by other jobs on the machine); the grain rows are wall-clock, with threads.

Corpus: a feed_world corpus (default the 1M-item "1m" size) goes through prompt building with
quantised numbers, LLaMA-3 tokenisation (+ fitting the item budget) and packing into the one-tower
batch format; items/s per stage and end to end, plus the grain pipeline (`embedding_batches`, the
same work with reader threads) on a slice. Padding waste (fraction of pad tokens in the batches) of
plain padding to the budget, length buckets, and packing (first fit, best fit).
MovieLens: the same waste figures for dual-encoder training batches (member + item towers).

    .venv/bin/python benchmarks/data_pipeline.py [--size 1m] [--items N] [--movielens-examples N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import grain
import numpy as np
from tqdm.auto import tqdm

from ff_jax.assets import llama3_tokenizer_model
from ff_jax.data import feed_world
from ff_jax.data.packing import OneTowerBatcher, PackedBatchIterDataset, padding_waste
from ff_jax.data.pipeline import (BatchConfig, BucketBatchIterDataset, PromptTokenizer, embedding_batches,
                                  suggest_rows, train_batches)
from ff_jax.data.prompts import PromptRenderer, PromptTemplate
from ff_jax.data.quantizer import Quantizer
from ff_jax.model.tokenizer import load_tokenizer
from machine import describe

CHUNK = 20_000


def pack_all(tokens: list[np.ndarray], config: BatchConfig, pad_id: int) -> tuple[float, float, int]:
    """(CPU seconds, padding waste, batches) of packing every prompt into one-tower batches."""
    examples = [{"tokens": t, "id": str(i)} for i, t in enumerate(tokens)]
    source = grain.MapDataset.source(examples).to_iter_dataset(grain.ReadOptions(num_threads=0))
    b = config.examples_per_shard
    if config.mode == "bucketed":
        batches = BucketBatchIterDataset(source, config.bucket_boundaries, lambda e: len(e["tokens"]),
                                         lambda n: OneTowerBatcher(b, config.tower_spec("item", n), pad_id), b)
    else:
        batches = PackedBatchIterDataset(source, lambda: OneTowerBatcher(b, config.tower_spec("item"), pad_id))
    begin, pads, total, count, seen = time.process_time(), 0, 0, 0, 0
    for batch in batches:
        pads += int((batch.segment_ids == 0).sum())
        total += batch.segment_ids.size
        seen += int(batch.example_mask.sum())
        count += 1
    assert seen == len(tokens), "packing lost prompts"
    return time.process_time() - begin, pads / total, count


def corpus_benchmark(size: str, limit: int | None, tokenizer, rows: list) -> None:
    begin = time.perf_counter()
    world = feed_world.generate(feed_world.feed_world_config(size))
    items = world.tables.items if limit is None else world.tables.items.iloc[:limit]
    print(f"feed_world {size}: {len(items):,} items, generated in {time.perf_counter() - begin:.0f} s", file=sys.stderr)
    numeric = world.tables.schema.names("items", "numeric")
    quantizer = Quantizer.fit(items, numeric)  # percentiles of the whole corpus: fitting is not what is timed
    renderer = PromptRenderer(world.tables.schema, PromptTemplate(), quantizer)
    fmt = renderer.format()
    budget = 256
    config = BatchConfig(examples_per_shard=64, length=budget, item_budget=budget, mode="padded")
    prompt_tokenizer = PromptTokenizer(tokenizer, fmt, config)

    seconds = {"prompts + quantisation": 0.0, "tokenisation (LLaMA-3) + budget": 0.0}
    tokens: list[np.ndarray] = []
    for start in tqdm(range(0, len(items), CHUNK), desc="render + tokenise", unit="chunk"):
        chunk = items.iloc[start:start + CHUNK]
        t0 = time.process_time()  # CPU time: the stages run on one core; other jobs may share it
        prompts = renderer.item_prompts(chunk)
        t1 = time.process_time()
        tokens += prompt_tokenizer.items(prompts)
        t2 = time.process_time()
        seconds["prompts + quantisation"] += t1 - t0
        seconds["tokenisation (LLaMA-3) + budget"] += t2 - t1
    lengths = np.array([len(t) for t in tokens])
    cut = int((lengths == budget).sum())
    print(f"item prompt tokens: mean {lengths.mean():.0f}, p50 {np.median(lengths):.0f}, "
          f"max {lengths.max()}; {cut:,} cut to the {budget}-token budget", file=sys.stderr)

    b, length = 64, 1024
    variants = {
        f"plain padding (L={budget})": BatchConfig(examples_per_shard=b, length=budget, mode="padded"),
        "length buckets (64/128/192/256)": BatchConfig(examples_per_shard=b, length=budget, mode="bucketed",
                                                       bucket_boundaries=(64, 128, 192, 256)),
    }
    for strategy in ("first_fit", "best_fit"):
        rows_needed = suggest_rows(lengths[:10_000], b, length, headroom=1.05)
        variants[f"packed {strategy} (L={length}, {rows_needed} rows, S=16)"] = BatchConfig(
            examples_per_shard=b, length=length, mode="packed", item_rows=rows_needed, max_segments=16,
            strategy=strategy)
    n = len(tokens)
    for name, cfg in tqdm(variants.items(), desc="packing variants", unit="variant"):
        pack_seconds, waste, batches = pack_all(tokens, cfg, tokenizer.pad_id)
        end_to_end = sum(seconds.values()) + pack_seconds
        rows.append((f"feed_world {size} corpus", name, n / seconds["prompts + quantisation"],
                     n / seconds["tokenisation (LLaMA-3) + budget"], n / pack_seconds, n / end_to_end, waste,
                     batches))

    # The grain pipeline itself (tokenise + fit + pack with reader threads) on a slice of the records.
    sample = min(n, 100_000)
    records = [{"item_id": i, "item_prompt": p} for i, p in
               zip(items["item_id"].iloc[:sample], renderer.item_prompts(items.iloc[:sample]))]
    cfg = variants[next(k for k in variants if k.startswith("packed first_fit"))]
    t0 = time.perf_counter()
    count = sum(1 for _ in embedding_batches(records, tokenizer, fmt, cfg, tower="item", shard_index=0,
                                             shard_count=1, read_threads=os.cpu_count() or 1))
    grain_seconds = time.perf_counter() - t0
    rows.append((f"feed_world {size} corpus", f"grain embedding_batches: {sample:,} items, packed first_fit",
                 float("nan"), float("nan"), float("nan"), sample / grain_seconds, float("nan"), count))


def movielens_store(data_dir: str):
    """MovieLens-100k prepared into data_dir (ff_jax.data.store): (train source, prompt format)."""
    from ff_jax.data import prepared as tb

    tb.build("movielens_feed", "100k", data_dir)
    sources, fmt, _ = tb.open_prepared(data_dir, "movielens_feed", "100k")
    return sources["train"], fmt


def movielens_benchmark(examples: int, tokenizer, rows: list, data_dir: str) -> None:
    train, fmt = movielens_store(data_dir)
    # an evenly spread sample: new and established members, early and late
    records = [train[int(i)] for i in np.linspace(0, len(train) - 1, min(examples, len(train))).astype(int)]
    b, h, length = 8, 1, 1024
    probe = PromptTokenizer(tokenizer, fmt, BatchConfig(length=length))
    member_lengths = [len(probe.member(r)) for r in records[::8]]
    item_lengths = [len(t) for r in records[::8] for t in probe.items([r["positive_prompt"]])]
    print(f"MovieLens member prompt tokens: mean {np.mean(member_lengths):.0f}, p50 {np.median(member_lengths):.0f}; "
          f"item prompt tokens: mean {np.mean(item_lengths):.0f}", file=sys.stderr)
    variants = {
        f"plain padding (L={length})": BatchConfig(examples_per_shard=b, length=length, num_hard_negatives=h,
                                                   mode="padded"),
        "length buckets (128..1024)": BatchConfig(examples_per_shard=b, length=length, num_hard_negatives=h,
                                                  mode="bucketed", bucket_boundaries=(128, 256, 512, 768, 1024)),
    }
    for strategy in ("first_fit", "best_fit"):
        member_rows = suggest_rows(member_lengths, b, length)
        item_rows = suggest_rows(item_lengths, b * (1 + h), length)
        variants[f"packed {strategy} (Rm={member_rows}, Ri={item_rows}, S=16)"] = BatchConfig(
            examples_per_shard=b, length=length, num_hard_negatives=h, member_rows=member_rows,
            item_rows=item_rows, max_segments=16, strategy=strategy)
    for name, cfg in tqdm(variants.items(), desc="movielens variants", unit="variant"):
        t0 = time.perf_counter()
        batches = list(train_batches(records, tokenizer, fmt, cfg, seed=0, num_epochs=1, shard_index=0,
                                     shard_count=1, read_threads=os.cpu_count() or 1))
        seconds = time.perf_counter() - t0
        waste = float(np.mean([padding_waste(batch) for batch in batches]))
        rows.append(("MovieLens train (members + items)", f"grain train_batches: {name}", float("nan"), float("nan"), float("nan"),
                     len(records) / seconds, waste, len(batches)))


RECIPE_RUN = "experiments/results/numbers_movielens/runs/quantized_seed0/metrics.jsonl"


def recipe_rate(data_dir: str, batches: int) -> dict:
    """Training examples/s the grain pipeline makes from the prepared store with the MovieLens CPU
    recipe's batches (configs/experiments/movielens_cpu.gin: SmolLM2's tokenizer, 32 examples a step,
    budgets 256/64, packed rows of 512), beside what that recipe's train step consumed (the median
    `examples_per_s` of its committed run's log, measured on this kind of machine)."""
    import json

    from ff_jax.assets import smollm2_gguf

    train, fmt = movielens_store(data_dir)
    config = BatchConfig(examples_per_shard=32, length=512, member_budget=256, item_budget=64, max_segments=16)
    tokenizer = load_tokenizer(smollm2_gguf())
    iterator = iter(train_batches(train, tokenizer, fmt, config, seed=0, shard_index=0, shard_count=1,
                                  read_threads=2))
    next(iterator)  # start-up (threads, first reads) is not the steady rate
    t0 = time.perf_counter()
    made = sum(int(next(iterator).example_mask.sum()) for _ in range(batches))
    produced = made / (time.perf_counter() - t0)
    steps = [json.loads(line) for line in open(RECIPE_RUN)]
    consumed = float(np.median([s["examples_per_s"] for s in steps if s.get("split") == "train" and "examples_per_s" in s]))
    return {"pipeline_examples_per_s": produced, "train_step_examples_per_s": consumed, "ratio": produced / consumed,
            "batches": batches}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1m", choices=sorted(feed_world.SIZES))
    parser.add_argument("--items", type=int, default=None, help="only the first N items of the corpus (0: skip the corpus)")
    parser.add_argument("--movielens-examples", type=int, default=4_000)
    parser.add_argument("--recipe-batches", type=int, default=100, help="MovieLens recipe batches timed (0: skip)")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(llama3_tokenizer_model())
    rows: list = []
    data_dir = tempfile.mkdtemp(prefix="data_pipeline_")
    if args.recipe_batches:
        rate = recipe_rate(data_dir, args.recipe_batches)
        print(f"MovieLens CPU recipe: the pipeline makes {rate['pipeline_examples_per_s']:,.0f} training examples/s "
              f"from the store (2 reader threads); the recipe's train step consumed "
              f"{rate['train_step_examples_per_s']:,.1f} examples/s: {rate['ratio']:.1f}x headroom.", flush=True)
    if args.items != 0:
        corpus_benchmark(args.size, args.items, tokenizer, rows)
    if args.movielens_examples:
        movielens_benchmark(args.movielens_examples, tokenizer, rows, data_dir)

    info = describe()
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; load average at the "
          f"end {info['load_average']:.1f}\n")
    print("| data | batches | prompts+quant. items/CPU-s | tokenise items/CPU-s | pack items/CPU-s "
          "| all stages items/CPU-s (grain: items/s wall) | padding waste | batches |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda x: "–" if x != x else f"{x:,.0f}"  # noqa: E731  (NaN: not measured separately)
    for data, name, render, tok, pack, total, waste, count in rows:
        waste_text = "–" if waste != waste else f"{100 * waste:.1f}%"
        print(f"| {data} | {name} | {fmt(render)} | {fmt(tok)} | {fmt(pack)} | {fmt(total)} | {waste_text} | {count:,} |")


if __name__ == "__main__":
    main()
