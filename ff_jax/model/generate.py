"""Greedy decoding with the KV cache: one prefill, then one jitted step per new token."""

import jax
import jax.numpy as jnp
from flax import nnx

from ff_jax.model.attention import KVCache
from ff_jax.model.llama import Llama


@nnx.jit
def _prefill(model: Llama, tokens, cache):
    out = model(tokens, cache=cache)
    return jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache


@nnx.jit
def _step(model: Llama, token, cache):
    out = model(token[:, None], cache=cache)
    return jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache


def greedy_generate(model: Llama, prompt_ids: list[int], max_new_tokens: int, stop_ids=()) -> list[int]:
    """The greedy continuation of one prompt (ids only, prompt excluded)."""
    cache = KVCache.empty(model.config, batch=1, slots=len(prompt_ids) + max_new_tokens)
    token, cache = _prefill(model, jnp.asarray([prompt_ids], jnp.int32), cache)
    generated = []
    for _ in range(max_new_tokens):
        next_id = int(jax.device_get(token)[0])
        generated.append(next_id)
        if next_id in stop_ids or len(generated) == max_new_tokens:
            break
        token, cache = _step(model, token, cache)
    return generated
