"""HF directory -> ff_jax -> HF directory, checked against transformers' LlamaForCausalLM (torch, CPU)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from ff_jax.model import make_mesh
from ff_jax.model.hf_checkpoint import SafetensorsSource, load_into_model, config_from_hf
from ff_jax.model.hf_export import save_hf
from ff_jax.model.pretrained import from_pretrained
from ff_jax.model.tokenizer import byte_tokenizer
from ff_jax.model.vocab import grow_vocab

LENGTH = 160  # longer than the llama3 scaling's original context below, so the scaling matters

CONFIGS = {
    # untied, GQA ratio 2, llama3 RoPE scaling, one safetensors file
    "untied_scaled": dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, rope_theta=10_000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                          max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # tied, GQA ratio 4, head_dim != hidden/heads, sharded save
    "tied_sharded": dict(vocab_size=256, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, rope_theta=500_000.0,
                         max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def _tokens(vocab, seed=0, batch=2):
    return np.random.default_rng(seed).integers(0, vocab, (batch, LENGTH)).astype(np.int32)


@nnx.jit
def _logits(model, tokens):
    return model(tokens).logits


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_dir(request, tmp_path_factory):
    """A random tiny LlamaForCausalLM saved by transformers, with its reference logits."""
    torch.manual_seed(0)
    reference = LlamaForCausalLM(HFConfig(**CONFIGS[request.param])).eval()
    directory = tmp_path_factory.mktemp(request.param)
    shard = "20KB" if request.param == "tied_sharded" else "5GB"
    reference.save_pretrained(directory, max_shard_size=shard)
    tokens = _tokens(reference.config.vocab_size)
    return directory, tokens, _hf_logits(reference, tokens)


def test_saved_layout_is_what_the_case_claims(hf_dir):
    directory, _, _ = hf_dir
    sharded = (directory / "model.safetensors.index.json").exists()
    assert sharded == ("tied_sharded" in directory.name)
    if sharded:
        assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1


def test_import_matches_transformers_and_export_round_trips(hf_dir, tmp_path):
    directory, tokens, reference = hf_dir
    model, tokenizer = from_pretrained(directory)
    assert tokenizer is None  # transformers' save_pretrained wrote no tokenizer
    ours = np.asarray(_logits(model, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, reference, atol=1e-4)

    exported = save_hf(model, tmp_path / "out", max_shard_bytes=30_000)
    assert (exported / "model.safetensors.index.json").exists()  # small limit: sharded export
    reloaded = LlamaForCausalLM.from_pretrained(exported).eval()
    assert reloaded.config.tie_word_embeddings == model.config.tie_embeddings
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), reference, atol=1e-5)


def test_sharded_streaming_reads_only_each_shard(hf_dir):
    directory, tokens, reference = hf_dir
    cfg = config_from_hf(json.loads((directory / "config.json").read_text()), scan_layers=True)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    reads = []

    import contextlib

    with contextlib.ExitStack() as stack:
        source = SafetensorsSource(directory, stack)
        original_read = source.read

        def recording_read(name, ranges):
            reads.append((name, ranges, source.shape(name)))
            return original_read(name, ranges)

        source.read = recording_read
        model = load_into_model(cfg, source, mesh=mesh)

    embedding = model.embed.embedding[...]
    assert isinstance(embedding.sharding, jax.sharding.NamedSharding)
    assert len(embedding.sharding.device_set) == 8 and not embedding.sharding.is_fully_replicated
    # Every weight here is split over fsdp and/or tensor, so no single read covers a whole tensor.
    assert reads and all(
        any(b - a < n for (a, b), n in zip(ranges, shape)) for _, ranges, shape in reads
    ), [r for r in reads if all(b - a == n for (a, b), n in zip(r[1], r[2]))][:3]
    with jax.set_mesh(mesh):
        logits = jax.jit(lambda m, t: m(t).logits)(model, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), reference, atol=1e-4)


def test_bfloat16_params_and_export(hf_dir, tmp_path):
    directory, tokens, _ = hf_dir
    model, _ = from_pretrained(directory, param_dtype="bfloat16")
    assert model.embed.embedding[...].dtype == jnp.bfloat16
    save_hf(model, tmp_path, dtype="bfloat16")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.dtype == torch.bfloat16
    theirs = reloaded.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(theirs, np.asarray(model.embed.embedding[...].astype(jnp.float32)))


def test_export_merges_lora_and_saves_tokenizer(hf_dir, tmp_path):
    directory, tokens, without_lora = hf_dir
    model, _ = from_pretrained(directory, lora_rank=4)
    # Fresh adapters are a no-op (B = 0); give them weight so the merge is visible.
    rng = np.random.default_rng(1)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        if path[-1] == "lora_b":
            variable.set_value(jnp.asarray(rng.normal(0, 0.05, variable.get_value().shape), jnp.float32))
    # Markers take the tokenizer past the model's vocabulary: export must refuse, then work once
    # the embedding has grown to match.
    vocab = model.config.vocab_size
    tokenizer = byte_tokenizer([f"<field{i}>" for i in range(max(vocab - 259, 0) + 2)])
    assert tokenizer.vocab_size > vocab
    with pytest.raises(ValueError, match="grow_vocab"):
        save_hf(model, tmp_path, tokenizer=tokenizer)
    model = grow_vocab(model, tokenizer.vocab_size)
    ours = np.asarray(_logits(model, jnp.asarray(tokens)))
    assert np.abs(ours[..., :vocab] - without_lora).max() > 1e-2  # the adapters do change the model
    save_hf(model, tmp_path, tokenizer=tokenizer)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), ours, atol=1e-4)
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == tokenizer.eos_id

    again, restored = from_pretrained(tmp_path)  # no LoRA now: merged into the kernels
    np.testing.assert_allclose(np.asarray(_logits(again, jnp.asarray(tokens))), ours, atol=1e-4)
    assert restored.markers == tokenizer.markers
    assert restored.vocab_size == again.config.vocab_size == tokenizer.vocab_size


def test_num_layers_override_loads_a_truncated_stack_equal_to_transformers_cut_the_same_way(tmp_path):
    """`from_pretrained(dir, num_layers=2)` on a 3-layer checkpoint keeps the first two blocks, the
    embedding and the final norm: the same logits as transformers' model with its last block removed."""
    torch.manual_seed(1)
    reference = LlamaForCausalLM(HFConfig(**CONFIGS["tied_sharded"])).eval()
    reference.save_pretrained(tmp_path)
    reference.model.layers = reference.model.layers[:2]
    reference.config.num_hidden_layers = 2
    tokens = _tokens(reference.config.vocab_size, seed=3)
    model, _ = from_pretrained(tmp_path, num_layers=2)
    assert model.config.num_layers == 2
    np.testing.assert_allclose(np.asarray(_logits(model, tokens)), _hf_logits(reference, tokens), atol=1e-4)
