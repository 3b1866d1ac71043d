"""The Flax LLaMA equals HF transformers' LlamaForCausalLM (torch, CPU) on random tiny models.

Sequences are long (>= 512 tokens) because RoPE mistakes hide in short prompts; one row is
right-padded; logits and the last hidden state must agree to 1e-4 in float32.
"""

import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from ff_jax.model import from_pretrained

LENGTH = 520
PAD_TAIL = 137


@nnx.jit
def _forward(model, tokens, segment_ids):
    return model(tokens, segment_ids=segment_ids)


def _hf_model(kv_heads: int, llama3_scaling: bool, tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(kv_heads * 10 + llama3_scaling * 2 + tied)
    scaling = None
    if llama3_scaling:
        # original context far below LENGTH, so the scaled band is actually exercised
        scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=128)
    config = HFLlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=kv_heads, rope_theta=10_000.0,
                           rope_scaling=scaling, max_position_embeddings=2048, rms_norm_eps=1e-5,
                           tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to ones; random scales catch a swapped norm
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "kv_heads, llama3_scaling, tied",
    [(4, False, False), (2, True, False), (1, True, True), (2, False, True)],
    ids=["mha-plain-untied", "gqa2-llama3-untied", "gqa4-llama3-tied", "gqa2-plain-tied"],
)
def test_logits_and_hidden_states_match_transformers(tmp_path, kv_heads, llama3_scaling, tied):
    hf = _hf_model(kv_heads, llama3_scaling, tied)
    hf.save_pretrained(tmp_path)
    model, _ = from_pretrained(tmp_path)

    rng = np.random.default_rng(kv_heads)
    tokens = rng.integers(0, 256, (2, LENGTH)).astype(np.int64)
    mask = np.ones_like(tokens)
    mask[1, LENGTH - PAD_TAIL:] = 0  # a right-padded row
    with torch.no_grad():
        expected = hf(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask), output_hidden_states=True)
    out = _forward(model, tokens.astype(np.int32), mask.astype(np.int32))

    real = mask.astype(bool)
    logits_diff = np.abs(np.asarray(out.logits)[real] - expected.logits.numpy()[real]).max()
    hidden_diff = np.abs(np.asarray(out.hidden)[real] - expected.hidden_states[-1].numpy()[real]).max()
    assert logits_diff <= 1e-4, logits_diff
    assert hidden_diff <= 1e-4, hidden_diff
