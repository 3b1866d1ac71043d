"""Bad checkpoints fail with an error that names the file, field or tensor at fault."""

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from ff_jax.model.pretrained import from_pretrained


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(HFConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    directory = tmp_path_factory.mktemp("good")
    model.save_pretrained(directory)
    model.save_pretrained(directory / "sharded", max_shard_size="20KB")
    return directory


def _copy(good_dir, tmp_path, name="model"):
    target = tmp_path / name
    shutil.copytree(good_dir, target, ignore=shutil.ignore_patterns("sharded"))
    return target


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def test_the_good_checkpoint_loads(good_dir):
    model, _ = from_pretrained(good_dir)  # so the failures below are caused by the damage alone
    assert model.config.num_layers == 2
    assert from_pretrained(good_dir / "sharded").model.config.hidden_size == 32


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*does not download"):
        from_pretrained(tmp_path / "no-such-model")


def test_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)


def test_truncated_safetensors(good_dir, tmp_path):
    directory = _copy(good_dir, tmp_path)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated or corrupt"):
        from_pretrained(directory)


def test_missing_shard(good_dir, tmp_path):
    directory = tmp_path / "sharded"
    shutil.copytree(good_dir / "sharded", directory)
    shard = sorted(directory.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        from_pretrained(directory)


def test_config_weight_shape_mismatch_names_the_tensor(good_dir, tmp_path):
    directory = _copy(good_dir, tmp_path)
    _edit_config(directory, intermediate_size=64)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has shape \[32, 48\] "
                                         r"but the config implies \[32, 64\]"):
        from_pretrained(directory)


def test_config_with_more_layers_than_the_weights(good_dir, tmp_path):
    directory = _copy(good_dir, tmp_path)
    _edit_config(directory, num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.2\..*' is missing"):
        from_pretrained(directory)


def test_weights_with_more_layers_than_the_config(good_dir, tmp_path):
    directory = _copy(good_dir, tmp_path)
    _edit_config(directory, num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"do not belong to a LLaMA.*model\.layers\.1\."):
        from_pretrained(directory)


@pytest.mark.parametrize("changes, message", [
    (dict(model_type="mistral"), "model_type='mistral' is not supported"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "rope type 'yarn'"),
    (dict(attention_bias=True), "attention_bias=True"),
])
def test_unsupported_hf_configs(good_dir, tmp_path, changes, message):
    directory = _copy(good_dir, tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(ValueError, match=message):
        from_pretrained(directory)


def _write_gguf(path, architecture):
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_non_llama_gguf(tmp_path):
    path = tmp_path / "tiny-gpt2.gguf"
    _write_gguf(path, "gpt2")
    with pytest.raises(ValueError, match=r"tiny-gpt2\.gguf: GGUF architecture 'gpt2' is not supported"):
        from_pretrained(path)


def test_truncated_or_garbage_gguf(tmp_path):
    path = tmp_path / "cut.gguf"
    _write_gguf(path, "llama")
    path.write_bytes(path.read_bytes()[:-100])  # the tensor data ends early
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file, truncated or corrupt"):
        from_pretrained(path)
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"garbage\.gguf: not a readable GGUF file"):
        from_pretrained(path)
