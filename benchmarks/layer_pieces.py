"""Where a forward pass spends its time: one SmolLM2-135M layer's pieces, ff_jax against HF, fp32, CPU.

Times, on one batch of hidden states (default 8 x 512), each library's attention sublayer
(projections, RoPE, scores, softmax, values, output projection), its SwiGLU MLP and the whole
decoder layer, plus one plain GEMM of the MLP's shape. ff_jax's attention runs twice: in causal
query tiles (the default) and as one dense masked tile (attention_chunk=0). Weights are random
and not shared: only speed is compared here; benchmarks/forward.py checks the outputs agree.

    .venv/bin/python benchmarks/layer_pieces.py [--batch 8] [--length 512] [--repeats 5] [--chunk 128]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from ff_jax.model import presets
from ff_jax.model.llama import Block
from forward import hf_config
import timing
from machine import describe


def best_ms(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up (compile), in ms: the least disturbed run."""
    return 1000 * min(timing.repeated(fn, repeats)[0])


def ff_jax_pieces(batch: int, length: int, chunk: int) -> dict:
    """name -> zero-argument callable, for one ff_jax Block with attention_chunk=chunk."""
    block = Block(presets.smollm2_135m(attention_chunk=chunk), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(block)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, length, 576), np.float32))
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    segments = jnp.ones((batch, length), jnp.int32)

    def timed(piece):
        fn = jax.jit(lambda state, x: piece(nnx.merge(graphdef, state), x))
        return lambda: fn(state, x).block_until_ready()

    return {"attention": timed(lambda b, x: b.attn(x, positions, segments)[0]),
            "mlp": timed(lambda b, x: b.mlp(x)),
            "layer": timed(lambda b, x: b(x, positions, segments)[0])}


def hf_pieces(batch: int, length: int) -> dict:
    cfg = hf_config(presets.smollm2_135m())
    cfg._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(cfg, 0).eval()
    x = torch.randn(batch, length, cfg.hidden_size)
    rope = LlamaRotaryEmbedding(cfg)(x, torch.arange(length)[None].expand(batch, length))

    def timed(fn):
        def run():
            with torch.inference_mode():
                fn()
        return run

    return {"attention": timed(lambda: layer.self_attn(x, attention_mask=None, position_embeddings=rope)),
            "mlp": timed(lambda: layer.mlp(x)),
            "layer": timed(lambda: layer(x, attention_mask=None, position_embeddings=rope))}


def gemm(batch: int, length: int) -> dict:
    """The gate projection's GEMM alone, [B·T, 576] x [576, 1536], in each library."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((batch * length, 576), np.float32)
    b = rng.standard_normal((576, 1536), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    matmul = jax.jit(jnp.matmul)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return {"ff_jax": lambda: matmul(ja, jb).block_until_ready(), "hf": lambda: ta @ tb,
            "gflop": 2 * batch * length * 576 * 1536 / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=128, help="queries per attention tile (attention_chunk)")
    args = parser.parse_args()
    info = describe("jax", "torch", "transformers")
    torch.set_num_threads(info["cores"])
    print(f"{info['cpu']}, {info['cores']} cores, load {info['load_average']:.1f}; {args.batch}x{args.length}, fp32")

    tiled, dense, hf = (ff_jax_pieces(args.batch, args.length, args.chunk), ff_jax_pieces(args.batch, args.length, 0),
                        hf_pieces(args.batch, args.length))
    print(f"\n| piece | ff_jax, tiles of {args.chunk} (ms) | ff_jax, one dense tile (ms) | HF (ms) | tiles / HF speed |")
    print("|---|---|---|---|---|")
    for name in ("attention", "mlp", "layer"):
        t, d, h = (best_ms(pieces[name], args.repeats) for pieces in (tiled, dense, hf))
        print(f"| {name} | {t:.1f} | {d:.1f} | {h:.1f} | {h / t:.2f}x |")
    mm = gemm(args.batch, args.length)
    rates = {lib: mm["gflop"] / best_ms(mm[lib], args.repeats) * 1000 for lib in ("ff_jax", "hf")}
    print(f"\nGEMM {args.batch * args.length}x576 . 576x1536: ff_jax {rates['ff_jax']:.0f} GFLOP/s, "
          f"HF (torch) {rates['hf']:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
