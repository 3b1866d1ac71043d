"""Dual-encoder training throughput on this machine: examples/s and tokens/s of the jitted train
step, for the tiny and SmolLM2-135M presets, with packed vs padded batches of the same examples.

Batches are feed_world "tiny" prompts (byte tokenizer, so both presets see the same tokens), made
by the real grain pipeline ahead of timing; the clock covers the train steps only (host→device
copy included). tokens/s counts prompt tokens, not padding. One run; ratios printed at the end.

    .venv/bin/python benchmarks/train_throughput.py [--presets tiny smollm2_135m] [--steps 10]
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import numpy as np

from ff_jax.data.batches import DualTowerBatch, segment_id_arrays
from ff_jax.data.pipeline import BatchConfig
from ff_jax.model import make_mesh, presets
from ff_jax.model.sharding import logical_axis_rules
from ff_jax.train import step as steps
from ff_jax.data.feed_data import FeedData
from ff_jax.train.dual_encoder import EncoderConfig
from ff_jax.train.loop import build_model
from ff_jax.train.losses import InfoNCE
from ff_jax.train.optimizer import OptimizerConfig, make_optimizer
from machine import describe

SHAPES = {  # per preset: examples per batch and token budgets (bytes: an item's fields before its text ~500)
    "tiny": dict(examples_per_shard=8, member_budget=1024, item_budget=640),
    "smollm2_135m": dict(examples_per_shard=2, member_budget=1024, item_budget=640),
}


def batch_config(preset: str, mode: str) -> BatchConfig:
    shape = SHAPES[preset]
    if mode == "padded":
        return BatchConfig(mode="padded", length=max(shape["member_budget"], shape["item_budget"]),
                           num_hard_negatives=1, **shape)
    b = shape["examples_per_shard"]
    # Packed rows as long as the padded ones, but fewer of them: prompts share rows.
    length = max(shape["member_budget"], shape["item_budget"])
    return BatchConfig(mode="packed", length=length, num_hard_negatives=1, max_segments=8,
                       member_rows=max(1, (b * 8) // 10), item_rows=max(1, (2 * b * 6) // 10), **shape)


def prompt_tokens(batch: DualTowerBatch) -> int:
    return int(sum((segments > 0).sum() for segments in segment_id_arrays(batch)))


def measure(preset: str, mode: str, data_dir: str, num_steps: int) -> dict:
    # The 30-layer model: scanned layers compile once, remat keeps activations within memory.
    # The tiny model keeps vocab 512 (bytes + markers).
    cfg = presets.get(preset, vocab_size=512) if preset == "tiny" else presets.get(preset, scan_layers=True, remat=True)
    config = batch_config(preset, mode)
    data = FeedData(data_dir, batch=config, tokenizer="byte", validation_members=0)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    loss = InfoNCE()
    model, tokenizer = build_model(data, EncoderConfig(), loss, cfg, None, {}, mesh, logical_axis_rules(), seed=0)
    batches = list(itertools.islice(data.train_iterator(tokenizer, 1), num_steps + 1))
    optimizer = OptimizerConfig(learning_rate=1e-4, warmup_steps=1, total_steps=100)
    tx = make_optimizer(optimizer)
    graphdef, state, shardings = steps.init_train_state(model, tx, 0, 0, mesh)
    sharding = steps.batch_shardings(batches[0], mesh)
    train_step, _ = steps.jit_steps(graphdef, steps.StepConfig(loss, tx, *data.segments), shardings, sharding, mesh)
    compile_start = time.perf_counter()
    state, metrics = train_step(state, steps.device_batch(batches[0], sharding))
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - compile_start
    start = time.perf_counter()
    for batch in batches[1:]:
        state, metrics = train_step(state, steps.device_batch(batch, sharding))
    jax.block_until_ready(metrics["loss"])
    elapsed = time.perf_counter() - start
    examples = sum(float(np.sum(b.example_mask)) for b in batches[1:])
    tokens = sum(prompt_tokens(b) for b in batches[1:])
    slots = sum(b.member_segment_ids.size + b.item_segment_ids.size for b in batches[1:])
    return {"preset": preset, "mode": mode, "steps": num_steps, "examples_per_s": examples / elapsed,
            "tokens_per_s": tokens / elapsed, "padding": 1 - tokens / slots, "step_s": elapsed / num_steps,
            "first_step_s": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "smollm2_135m"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: tiny 10, others 2)")
    parser.add_argument("--data_dir", default="/tmp/ff_jax_bench_tfds")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    info = describe("jax", "flax")
    print(f"devices: {jax.devices()}; {info}")
    rows = []
    for preset in args.presets:
        for mode in ("padded", "packed"):
            num_steps = args.steps or (10 if preset == "tiny" else 2)
            row = measure(preset, mode, args.data_dir, num_steps)
            rows.append(row)
            print(f"{preset:>13} {mode:>6}: {row['examples_per_s']:8.2f} examples/s {row['tokens_per_s']:10.0f} "
                  f"tokens/s  padding {row['padding']:.0%}  step {row['step_s']:.2f}s  (first step "
                  f"{row['first_step_s']:.1f}s)", flush=True)
    for preset in args.presets:
        by_mode = {r["mode"]: r for r in rows if r["preset"] == preset}
        ratio = by_mode["packed"]["examples_per_s"] / by_mode["padded"]["examples_per_s"]
        print(f"{preset}: packed / padded examples/s = {ratio:.2f}x")
    if len(args.presets) > 1:
        base = {r["mode"]: r for r in rows if r["preset"] == args.presets[0]}
        for preset in args.presets[1:]:
            other = {r["mode"]: r for r in rows if r["preset"] == preset}
            print(f"{args.presets[0]} / {preset} tokens/s (packed) = "
                  f"{base['packed']['tokens_per_s'] / other['packed']['tokens_per_s']:.1f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
