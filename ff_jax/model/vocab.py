"""Grow a model's vocabulary to match tokens added with `Tokenizer.add_special_tokens`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ff_jax.model.llama import Llama


def grow_vocab(model: Llama, new_vocab_size: int) -> Llama:
    """A new Llama with `new_vocab_size` rows in the embedding (and columns in an untied lm_head,
    and its LoRA adapter); `model` is left untouched. Existing ids keep their weights.

    New rows start at the MEAN of the existing rows, not at random: a random or zero row can
    give a new token an extreme logit (or sit far from every real token at the input), which
    shifts the whole next-token distribution; the mean keeps outputs for existing text unchanged
    in spirit and gives each new token the average logit until fine-tuning moves it.
    """
    cfg = model.config
    if new_vocab_size < cfg.vocab_size:
        raise ValueError(f"grow_vocab cannot shrink the vocabulary ({cfg.vocab_size} -> {new_vocab_size})")
    new_cfg = cfg.replace(vocab_size=int(new_vocab_size))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Llama(new_cfg, rngs=nnx.Rngs(0))))
    state = nnx.state(model)
    extra = new_vocab_size - cfg.vocab_size

    def grow(variable):
        axes = variable.get_metadata().get("logical_axes") or ()
        if "vocab" not in axes:
            return variable.replace(variable.get_value())  # shared array, new Variable
        axis = axes.index("vocab")
        old = variable.get_value()
        mean = jnp.mean(old.astype(jnp.float32), axis=axis, keepdims=True).astype(old.dtype)
        new_shape = list(old.shape)
        new_shape[axis] = extra
        grown = jnp.concatenate([old, jnp.broadcast_to(mean, new_shape)], axis=axis)
        return variable.replace(_keep_sharding(grown, old))

    new_state = jax.tree.map(grow, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, new_state)


def _keep_sharding(grown: jax.Array, old: jax.Array) -> jax.Array:
    """Place the grown array like the old one when its shard sizes still divide the new shape."""
    sharding = getattr(old, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        mesh_shape = dict(sharding.mesh.shape)
        for dim, axes in zip(grown.shape, sharding.spec):
            names = (axes,) if isinstance(axes, str) else tuple(axes or ())
            size = 1
            for name in names:
                size *= mesh_shape[name]
            if dim % size:
                return grown
        return jax.device_put(grown, sharding)
    return grown
