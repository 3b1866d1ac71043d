"""GGUF files: the real SmolLM2-135M (Q4_1/Q8_0) and a tiny LLaMA-3.1-style file written here."""

import dataclasses

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from ff_jax import assets
from ff_jax.model import RopeScaling, presets
from ff_jax.model.pretrained import from_pretrained

# A plain English paragraph (written for this test, not from any training set we know of).
# One worker loads SmolLM2 once for the whole module (make test runs pytest-xdist, --dist loadgroup).
pytestmark = pytest.mark.xdist_group("smollm2_gguf")

PARAGRAPH = ("The city council met on Tuesday evening to discuss the new budget. Several residents spoke "
             "about the need for better public transport, while others asked for more money to be spent "
             "on parks and schools. After a long debate, the council agreed to delay the final vote "
             "until next month.")


@nnx.jit
def _logits(model, tokens):
    return model(tokens).logits


@pytest.fixture(scope="module")
def smollm2():
    return from_pretrained(assets.smollm2_gguf(), scan_layers=True)


def test_smollm2_config_is_read_from_the_metadata(smollm2):
    model, tokenizer = smollm2
    expected = presets.smollm2_135m(scan_layers=True)
    assert dataclasses.asdict(model.config) == pytest.approx(dataclasses.asdict(expected))
    assert tokenizer.vocab_size == model.config.vocab_size == 49152


def test_q_k_unpermuted_like_transformers_gguf_loader(smollm2):
    # transformers' own GGUF loader reverses llama.cpp's q/k permutation; apply it to the same
    # dequantised tensors and compare with the weights we loaded (HF layout: [heads*head_dim, embed]).
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    model, _ = smollm2
    cfg = model.config
    processor = LlamaTensorProcessor({"num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads})
    reader = gguf.GGUFReader(str(assets.smollm2_gguf()))
    tensors = {t.name: t for t in reader.tensors if t.name.startswith("blk.7.")}
    for kind, ours in (("attn_q", model.layers.attn.q.kernel), ("attn_k", model.layers.attn.k.kernel),
                       ("attn_v", model.layers.attn.v.kernel)):
        name = f"blk.7.{kind}.weight"
        dequantised = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
        expected = processor.process(dequantised, name).weights
        ours_hf = np.asarray(ours[...][7]).reshape(cfg.hidden_size, -1).T
        np.testing.assert_array_equal(ours_hf, expected)


def test_smollm2_knows_berlin_and_has_sane_perplexity(smollm2):
    model, tokenizer = smollm2
    paragraph = tokenizer.encode(PARAGRAPH)  # SmolLM2 adds no BOS (add_bos_token is false)
    length = len(paragraph)

    # Greedy decoding in a fixed-size buffer (one compile): causal attention ignores the tail.
    prompt = tokenizer.encode("The capital of Germany is")
    buffer = np.zeros((1, length), np.int32)
    buffer[0, :len(prompt)] = prompt
    for step in range(3):
        position = len(prompt) + step
        logits = _logits(model, jnp.asarray(buffer))
        buffer[0, position] = int(jnp.argmax(logits[0, position - 1]))
    continuation = tokenizer.decode(buffer[0, len(prompt):len(prompt) + 3].tolist())
    assert continuation.startswith(" Berlin"), continuation

    logits = _logits(model, jnp.asarray([paragraph], jnp.int32))[0, :-1]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(paragraph[1:])[:, None], -1).mean()
    perplexity = float(jnp.exp(nll))
    # Measured 16.5 (2-core CPU, float32). A broken layer pushes it into the hundreds; a mask that
    # leaks future tokens pulls it towards 1.
    assert 8.0 < perplexity < 25.0, perplexity


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: HF rotate_half rows -> interleaved pairs, per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_tiny_llama31_gguf_with_rope_freqs_matches_transformers(tmp_path):
    """A random HF model written as a LLaMA-3.1-style GGUF by hand (F32 tensors, permuted q/k,
    `rope_freqs` for the llama3 scaling, untied output, a byte-level vocab): we must read back the
    config, including the rope scaling, and reproduce transformers' logits."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)
    hf_cfg = HFConfig(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=500_000.0, rope_scaling=scaling,
                      rms_norm_eps=1e-5, max_position_embeddings=131_072, tie_word_embeddings=False)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(hf_cfg).eval()
    weights = {k: v.detach().numpy() for k, v in reference.state_dict().items()}

    path = tmp_path / "tiny-llama31.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(131_072)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(500_000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    writer.add_token_list(alphabet + ["Ġt", "he", "Ġthe", "<|end_of_text|>"])
    writer.add_token_types([1] * 259 + [3])
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_eos_token_id(259)
    base = 1.0 / 500_000.0 ** (np.arange(0, 16, 2) / 16)
    writer.add_tensor("rope_freqs.weight", (base / reference.model.rotary_emb.inv_freq.numpy()).astype(np.float32))
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", weights["lm_head.weight"])
    names = dict(attn_norm="input_layernorm", attn_q="self_attn.q_proj", attn_k="self_attn.k_proj",
                 attn_v="self_attn.v_proj", attn_output="self_attn.o_proj", ffn_norm="post_attention_layernorm",
                 ffn_gate="mlp.gate_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj")
    for i in range(2):
        for ours, theirs in names.items():
            w = weights[f"model.layers.{i}.{theirs}.weight"]
            if ours in ("attn_q", "attn_k"):
                w = _llama_cpp_permute(w, 4 if ours == "attn_q" else 2)
            writer.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    model, tokenizer = from_pretrained(path)
    assert model.config.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
    assert not model.config.tie_embeddings
    assert tokenizer.encode(" the the") == [258, 258] and tokenizer.eos_id == 259
    tokens = np.random.default_rng(0).integers(0, 260, (2, 64))
    with torch.no_grad():
        expected = reference(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(_logits(model, jnp.asarray(tokens, jnp.int32))), expected, atol=1e-4)
