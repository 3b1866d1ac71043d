"""`make demo` (`ff-jax demo`): the whole job end to end on a CPU, printing what it finds.

Each stage is a function so that later stages (ranking, serving) slot in one by one. The training
run is a gin experiment file like any other (EXPERIMENT); the demo only prepares its data first.
"""

import shutil
import time
from pathlib import Path
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ff_jax import assets
from ff_jax.data import compact_feed_world
from ff_jax.gin_cli import configured
from ff_jax.model import from_pretrained
from ff_jax.model.generate import greedy_generate
from ff_jax.retrieval.embed_job import EmbedConfig, embed_towers, train_arguments
from ff_jax.retrieval.evaluate import evaluate_run
from ff_jax.train.loop import train

EXPERIMENT = "experiments/compact_feed_world.gin"  # the run of stages 3 and 4

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


def feed_data_stage(workdir: Path) -> tuple[Path, str]:
    """feed_world "tiny" with compact prompts as TFDS datasets, and a word-level tokenizer fitted to them."""
    _banner("2. Feed data: feed_world 'tiny' with quantised counts, TFDS + grain")
    data_dir = workdir / "tfds"
    prompts, tokenizer = compact_feed_world.prepare(data_dir)
    print(f"{len(prompts)} items; an item prompt: {prompts[0][:150]}")
    return data_dir, tokenizer


def dual_encoder_stage(run_dir: Path, steps: int) -> dict:
    """grain packed batches -> InfoNCE dual encoder -> held-out recall@K, as the gin config says."""
    _banner(f"3. Dual encoder: tiny LLaMA from scratch, InfoNCE + hard negatives, {steps} steps")
    validation = train(str(run_dir), progress=True)["validation"]
    print(f"held-out validation members ranked against the corpus ({run_dir}):")
    trained, chance = validation["recall@10"], validation["random_recall@10"]
    print(f"  recall@10: {trained:.3f}   random: {chance:.4f}   ({trained / max(chance, 1e-9):.0f}x)")
    print(f"  recall@50: {validation['recall@50']:.3f}")
    print(f"  in-batch accuracy: {validation['in_batch_accuracy']:.2f}")
    return validation


def retrieval_stage(run_dir: Path) -> dict:
    """`ff-jax embed` + `ff-jax eval` in-process: the checkpoint embeds the corpus and the test
    members, exact and ScaNN search rank the corpus, and the same members are ranked by baselines."""
    _banner("4. Retrieval: embed corpus + test members, exact and ScaNN kNN, against baselines")
    embed_towers(run_dir, train_arguments(), EmbedConfig(dims=(32,)), progress=True)
    report = evaluate_run(str(run_dir), ks=(10, 50, 100), baselines=("popularity", "random"), progress=False)
    full = report["by_dim"][str(report["width"])]["metrics"]["all"]["recall@10"]
    popular = report["baselines"]["popularity"]["metrics"]["all"]["recall@10"]
    print(f"test recall@10: dual encoder {full:.3f}, popularity {popular:.3f} "
          f"({report['members_evaluated']} members, report in {run_dir / 'eval'})")
    return report


def run(workdir: Path, steps: int = 100, bindings: Sequence[str] = ()) -> dict:
    """The demo into `workdir` (emptied first: the demo shows the whole job). The run is
    EXPERIMENT with the prepared data, `steps` and `bindings` ("NAME=VALUE", as --gin.NAME=VALUE)."""
    workdir = Path(workdir)
    if workdir.exists():
        shutil.rmtree(workdir)
    backbone_stage()
    data_dir, tokenizer = feed_data_stage(workdir)
    run_dir = workdir / "run"
    with configured([EXPERIMENT], [f"DATA_DIR={str(data_dir)!r}", f"TOKENIZER={tokenizer!r}", f"STEPS={steps}",
                                   *bindings]):
        run_dir.mkdir(parents=True)
        (run_dir / "config.gin").write_text(gin.config_str())  # so `ff-jax embed --workdir=<run_dir>` works too
        dual_encoder_stage(run_dir, steps)
        return retrieval_stage(run_dir)
