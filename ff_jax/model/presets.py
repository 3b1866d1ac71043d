"""Architecture presets, bindable from gin (configs/model/*.gin) by name.

Each takes keyword overrides (dtype="bfloat16", remat=True, lora_rank=16, ...).
"""

import gin

from ff_jax.model.config import LlamaConfig, RopeScaling

_LLAMA32_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)
_LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)


@gin.configurable
def llama3_2_1b(**overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=128_256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                       num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500_000.0,
                       rope_scaling=_LLAMA32_SCALING, tie_embeddings=True, **overrides)


@gin.configurable
def llama3_2_3b(**overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=128_256, hidden_size=3072, intermediate_size=8192, num_layers=28,
                       num_heads=24, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
                       rope_scaling=_LLAMA32_SCALING, tie_embeddings=True, **overrides)


@gin.configurable
def llama3_1_8b(**overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_layers=32,
                       num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500_000.0,
                       rope_scaling=_LLAMA31_SCALING, tie_embeddings=False, **overrides)


@gin.configurable
def smollm2_135m(**overrides) -> LlamaConfig:
    return LlamaConfig(vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_layers=30,
                       num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100_000.0,
                       tie_embeddings=True, max_position_embeddings=8192, **overrides)


@gin.configurable
def tiny(**overrides) -> LlamaConfig:
    """A 2-layer model for tests and CPU experiments."""
    settings = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, rope_theta=10_000.0, max_position_embeddings=4096)
    settings.update(overrides)
    return LlamaConfig(**settings)


PRESETS = {
    "llama3_2_1b": llama3_2_1b,
    "llama3_2_3b": llama3_2_3b,
    "llama3_1_8b": llama3_1_8b,
    "smollm2_135m": smollm2_135m,
    "tiny": tiny,
}


def get(name: str, **overrides) -> LlamaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)
