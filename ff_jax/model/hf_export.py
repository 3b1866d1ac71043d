"""Export a Llama to an HF LLaMA directory that transformers' LlamaForCausalLM.from_pretrained loads.

Writes config.json and safetensors (one file, or shards + model.safetensors.index.json above
`max_shard_bytes`). The safetensors files are written by hand, header first, then one tensor at
a time, so host memory holds one tensor (gathered from its shards), never the whole model.
LoRA adapters are merged into their kernels: HF's LlamaForCausalLM has no place for them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ff_jax.model.hf_checkpoint import BLOCK_TENSORS, TOP_TENSORS, hf_shape, config_to_hf
from ff_jax.model.llama import Llama

_SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def save_hf(model: Llama, directory: str | Path, *, tokenizer=None, dtype: Optional[str] = None,
            max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write `model` (and `tokenizer`, when given) as an HF LLaMA directory; returns the directory.
    `dtype` ("float32", "bfloat16", "float16") defaults to the model's param dtype."""
    cfg = model.config
    dtype = jnp.dtype(dtype or cfg.param_dtype).name
    if dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_SAFETENSORS_DTYPES)}, got {dtype!r}")
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
                         f"{cfg.vocab_size}; grow it first with ff_jax.model.vocab.grow_vocab")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("model*.safetensors"), directory / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)  # an older save with another shard count must not linger

    plan = _tensor_plan(model)
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    shards: list[list] = [[]]
    size = 0
    for entry in plan:
        nbytes = int(np.prod(entry[1])) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    progress = tqdm(total=len(plan), desc="writing weights", leave=False)
    for name, shard in zip(names, shards):
        _write_safetensors(directory / name, shard, model, dtype, progress)
    progress.close()
    if len(shards) > 1:
        weight_map = {entry[0]: name for name, shard in zip(names, shards) for entry in shard}
        total = sum(int(np.prod(entry[1])) * itemsize for entry in plan)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    (directory / "config.json").write_text(json.dumps(config_to_hf(cfg, dtype, tokenizer), indent=2))
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _tensor_plan(model: Llama) -> list[tuple[str, tuple[int, ...], str, str, Optional[int]]]:
    """(HF name, HF shape, our param path, layout, layer) for every tensor, in HF's usual order."""
    cfg = model.config
    plan = []

    def add(hf_name, path, layout, layer):
        shape = tuple(_our_weight(model, path, layer, shape_only=True))
        plan.append((hf_name, hf_shape(shape, layout), path, layout, layer))

    add(TOP_TENSORS["embed.embedding"][0], "embed.embedding", "same", None)
    for i in range(cfg.num_layers):
        for path, (name, layout) in BLOCK_TENSORS.items():
            add(f"model.layers.{i}.{name}", path, layout, i)
    add(TOP_TENSORS["final_norm.scale"][0], "final_norm.scale", "same", None)
    if not cfg.tie_embeddings:
        add(TOP_TENSORS["lm_head.kernel"][0], "lm_head.kernel", "T", None)
    return plan


def _our_weight(model: Llama, path: str, layer: Optional[int], shape_only: bool = False):
    """One weight in our layout (layer `layer` of a block param), LoRA merged; or just its shape."""
    *modules, leaf = path.split(".")
    owner = model
    stacked = layer is not None and model.config.scan_layers
    if layer is not None:
        owner = model.layers if stacked else model.layers[layer]
    for attribute in modules:
        owner = getattr(owner, attribute)
    variable = getattr(owner, leaf)
    if shape_only:
        shape = variable.get_value().shape
        return shape[1:] if stacked else shape

    def host(v):  # slice one layer on device first, so only that layer comes to the host
        return np.asarray(jax.device_get(v[...][layer] if stacked else v[...]))

    weight = host(variable)
    if leaf == "kernel" and getattr(owner, "lora_a", None) is not None:
        a, b = host(owner.lora_a).astype(np.float32), host(owner.lora_b).astype(np.float32)
        delta = np.tensordot(a, b, axes=1) * owner.lora_scale
        weight = (weight.astype(np.float32) + delta).astype(weight.dtype)
    return weight


def _to_hf_layout(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "same":
        return x
    if layout == "T":
        return x.T
    if layout == "heads_out":  # [embed, heads, head_dim] -> [heads*head_dim, embed]
        return x.reshape(x.shape[0], -1).T
    return x.reshape(-1, x.shape[-1]).T  # heads_in: [heads, head_dim, embed] -> [embed, heads*head_dim]


def _write_safetensors(path: Path, shard: list, model: Llama, dtype: str, progress) -> None:
    """The safetensors format: u64 header length, JSON header (dtype, shape, byte offsets per
    tensor), then the raw little-endian tensor bytes in header order."""
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for hf_name, shape, *_ in shard:
        nbytes = int(np.prod(shape)) * itemsize
        header[hf_name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for hf_name, shape, our_path, layout, layer in shard:
            weight = _our_weight(model, our_path, layer)
            data = np.ascontiguousarray(_to_hf_layout(weight, layout).astype(jnp.dtype(dtype)))
            assert data.shape == tuple(shape), (hf_name, data.shape, shape)
            f.write(data.tobytes())
            progress.update(1)
