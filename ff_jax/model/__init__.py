"""LLaMA-3 in Flax NNX: config, presets, the decoder, its KV cache and sharding."""

from ff_jax.model import presets
from ff_jax.model.attention import KVCache
from ff_jax.model.config import LlamaConfig, RopeScaling
from ff_jax.model.llama import Llama, ModelOutput, create_sharded_model
from ff_jax.model.sharding import DEFAULT_RULES, constrain, logical_axis_rules, make_mesh
from ff_jax.model.pretrained import Pretrained, from_pretrained, save_pretrained
