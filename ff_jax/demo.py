"""`make demo`: the whole job end to end on embedded defaults, printing what it finds.

Each stage is a function so that later stages (training, retrieval, ranking) slot in one by one.
"""

import argparse
import time

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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ff-jax demo", description=__doc__)
    parser.parse_args(argv)
    backbone_stage()


if __name__ == "__main__":
    main()
