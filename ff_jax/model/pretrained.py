"""`from_pretrained(path)`: one call from a local checkpoint to a model ready to run; and back
(`save_pretrained`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import jax.numpy as jnp

from ff_jax.model.gguf_checkpoint import load_gguf
from ff_jax.model.hf_checkpoint import load_hf
from ff_jax.model.hf_export import save_hf
from ff_jax.model.llama import Llama
from ff_jax.model.sharding import DEFAULT_RULES, Rules
from ff_jax.model.tokenizer import Tokenizer, load_tokenizer


class Pretrained(NamedTuple):
    """What `from_pretrained` returns; unpacks as `model, tokenizer = from_pretrained(path)`."""

    model: Llama
    tokenizer: Optional[Tokenizer]  # None when an HF directory carries no tokenizer file


def from_pretrained(path: str | Path, *, mesh=None, rules: Optional[Rules] = None, dtype=None,
                    param_dtype=None, **config_overrides) -> Pretrained:
    """Load a LLaMA-architecture checkpoint from a LOCAL path (nothing is downloaded):

    - an HF directory: config.json + model.safetensors, or shards + model.safetensors.index.json
      (streamed tensor by tensor into params born in their shards on `mesh`);
    - a GGUF file (llama.cpp), or a directory holding exactly one.

    `dtype` / `param_dtype` ("float32", "bfloat16", or a jnp dtype) set compute and storage
    precision (default float32); `config_overrides` set other LlamaConfig fields that do not
    change the weights' shapes (scan_layers, remat, lora_rank, max_position_embeddings, ...);
    `num_layers` below the checkpoint's own keeps only the first blocks (a truncated stack).
    The tokenizer comes from the GGUF metadata, or from tokenizer.json / tokenizer.model in the
    directory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (from_pretrained takes a local HF directory "
                                "or .gguf file; it does not download from the Hugging Face hub)")
    for key, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value is not None:
            config_overrides[key] = jnp.dtype(value).name
    rules = DEFAULT_RULES if rules is None else rules

    gguf_file = _gguf_in(path)
    if gguf_file is not None:
        model, tokenizer = load_gguf(gguf_file, mesh=mesh, rules=rules, **config_overrides)
        return Pretrained(model, tokenizer)
    if path.is_file() and path.name != "config.json":
        raise ValueError(f"{path}: expected an HF model directory (or its config.json) or a .gguf file")
    directory = path.parent if path.is_file() else path
    model = load_hf(directory, mesh=mesh, rules=rules, **config_overrides)
    return Pretrained(model, _optional_tokenizer(directory))


def _gguf_in(path: Path) -> Optional[Path]:
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if (path / "config.json").exists():
        return None  # an HF directory, even if a GGUF lies beside it
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) > 1:
        raise ValueError(f"{path}: holds {len(ggufs)} .gguf files and no config.json; pass the file itself")
    return ggufs[0] if ggufs else None


def _optional_tokenizer(directory: Path) -> Optional[Tokenizer]:
    try:
        return load_tokenizer(directory)
    except FileNotFoundError:
        return None


def save_pretrained(model: Llama, directory: str | Path, *, tokenizer: Optional[Tokenizer] = None,
                    dtype=None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` as an HF LLaMA directory (config.json + safetensors, sharded above
    `max_shard_bytes`) that transformers' LlamaForCausalLM.from_pretrained and `from_pretrained`
    load; LoRA adapters are merged in. See ff_jax.model.hf_export.save_hf."""
    return save_hf(model, directory, tokenizer=tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes)
