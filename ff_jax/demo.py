"""`make demo`: the whole job end to end on embedded defaults, printing what it finds.

Each stage is a function so that later stages (training, retrieval, ranking) slot in one by one.
"""

import argparse
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ff_jax import assets
from ff_jax.model import from_pretrained
from ff_jax.model.generate import greedy_generate

PROMPTS = (
    "Senior data engineer building streaming pipelines with Kafka and Spark.",
    "Hiring: backend engineer for our real-time data platform (Kafka, Flink).",
    "Pastry chef sharing a new sourdough croissant recipe.",
    "Our bakery opens a second shop downtown this weekend!",
)


def _banner(title: str):
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


@nnx.jit
def _mean_pooled(model, tokens, segment_ids):
    hidden = model(tokens, segment_ids=segment_ids, compute_logits=False).hidden.astype(jnp.float32)
    mask = (segment_ids > 0)[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)


def backbone_stage():
    """A real pretrained LLaMA-architecture checkpoint runs: it completes a sentence and embeds text."""
    _banner("1. Pretrained backbone: SmolLM2-135M from GGUF")
    start = time.perf_counter()
    model, tokenizer = from_pretrained(assets.smollm2_gguf(), scan_layers=True)
    print(f"loaded {model.config.num_params() / 1e6:.0f}M params in {time.perf_counter() - start:.1f}s "
          f"on {jax.devices()[0].platform}")
    prompt = "The capital of Germany is"
    continuation = greedy_generate(model, tokenizer.encode(prompt), 8, stop_ids=(tokenizer.eos_id,))
    print(f"greedy: {prompt!r} -> {tokenizer.decode(continuation)!r}")

    ids = [tokenizer.encode(p) for p in PROMPTS]
    length = max(map(len, ids))
    tokens = np.full((len(ids), length), tokenizer.pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for row, seq in enumerate(ids):
        tokens[row, :len(seq)] = seq
        segments[row, :len(seq)] = 1
    embeddings = np.asarray(_mean_pooled(model, tokens, segments))
    similarity = embeddings @ embeddings.T
    print("cosine similarity of mean-pooled embeddings (untuned backbone):")
    for i, prompt in enumerate(PROMPTS):
        print(f"  [{i}] {' '.join(f'{s:5.2f}' for s in similarity[i])}  {prompt[:48]}")
    return model, tokenizer


def dual_encoder_stage(workdir: Path, steps: int):
    """feed_world -> TFDS -> grain packed batches -> InfoNCE dual encoder -> held-out recall@K."""
    from ff_jax.data import compact_feed_world
    from ff_jax.train.loop import train

    _banner("2. Feed data: feed_world 'tiny' with quantised counts, TFDS + grain")
    data_dir = workdir / "tfds"
    prompts, tokenizer = compact_feed_world.prepare(data_dir)
    print(f"{len(prompts)} items; an item prompt: {prompts[0][:150]}")

    _banner(f"3. Dual encoder: tiny LLaMA from scratch, InfoNCE + hard negatives, {steps} steps")
    run = compact_feed_world.run_arguments(data_dir, tokenizer, steps)
    result = train(str(workdir / "run"), **run, eval_every=steps, recall_ks=(10, 50), progress=True,
                   tensorboard=False)
    validation = result["validation"]
    print(f"held-out validation members ranked against the corpus ({workdir / 'run'}):")
    trained, chance = validation["recall@10"], validation["random_recall@10"]
    print(f"  recall@10: {trained:.3f}   random: {chance:.4f}   ({trained / max(chance, 1e-9):.0f}x)")
    print(f"  recall@50: {validation['recall@50']:.3f}")
    print(f"  in-batch accuracy: {validation['in_batch_accuracy']:.2f}")
    return run


def retrieval_stage(workdir: Path, run: dict):
    """`ff-jax embed` + `ff-jax eval` in-process: the checkpoint embeds the corpus and the test
    members, exact and ScaNN search rank the corpus, and the same members are ranked by baselines."""
    from ff_jax.retrieval.embed_job import EmbedConfig, embed_towers, train_arguments
    from ff_jax.retrieval.evaluate import evaluate_run

    _banner("4. Retrieval: embed corpus + test members, exact and ScaNN kNN, against baselines")
    run_dir = workdir / "run"
    embed_towers(run_dir, train_arguments(**run), EmbedConfig(dims=(32,)), progress=True)
    report = evaluate_run(str(run_dir), ks=(10, 50, 100), baselines=("popularity", "random"), progress=False,
                          data=run["data"])
    full = report["by_dim"][str(report["width"])]["metrics"]["all"]["recall@10"]
    popular = report["baselines"]["popularity"]["metrics"]["all"]["recall@10"]
    print(f"test recall@10: dual encoder {full:.3f}, popularity {popular:.3f} "
          f"({report['members_evaluated']} members, report in {run_dir / 'eval'})")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ff-jax demo", description=__doc__)
    parser.add_argument("--workdir", default="workdirs/demo", help="where data, checkpoints and logs go")
    parser.add_argument("--steps", type=int, default=100, help="dual-encoder training steps")
    args = parser.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about every custom builder config
    workdir = Path(args.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh run each time: the demo shows the whole job
    backbone_stage()
    run = dual_encoder_stage(workdir, args.steps)
    retrieval_stage(workdir, run)


if __name__ == "__main__":
    main()
