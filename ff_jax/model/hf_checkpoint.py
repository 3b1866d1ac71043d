"""HF LLaMA checkpoints in and out, streamed tensor by tensor.

Import: config.json -> LlamaConfig; each parameter is created directly in its (possibly sharded)
placement with `jax.make_array_from_callback`, whose callback reads only that shard's slice
through safetensors' `get_slice`, so host memory peaks at about one tensor, not the model.
The same machinery (`load_into_model`) serves GGUF files: any "source" that can name HF tensors,
tell their shapes and read slices of them will do.

Export lives in hf_export.py (`save_hf`).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Optional, Protocol

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from tqdm.auto import tqdm

from ff_jax.model.config import LlamaConfig, RopeScaling
from ff_jax.model.llama import Llama
from ff_jax.model.sharding import DEFAULT_RULES, Rules, logical_to_spec

Range = tuple[int, int]  # [start, stop) along one axis

# Our parameter (path inside a block / at the top) -> HF tensor name and how the layouts relate:
#   same: identical; T: transposed ([in, out] vs HF's [out, in]);
#   heads_out: ours [embed, heads, head_dim] vs HF [heads*head_dim, embed];
#   heads_in:  ours [heads, head_dim, embed] vs HF [embed, heads*head_dim].
BLOCK_TENSORS = {
    "attn_norm.scale": ("input_layernorm.weight", "same"),
    "attn.q.kernel": ("self_attn.q_proj.weight", "heads_out"),
    "attn.k.kernel": ("self_attn.k_proj.weight", "heads_out"),
    "attn.v.kernel": ("self_attn.v_proj.weight", "heads_out"),
    "attn.o.kernel": ("self_attn.o_proj.weight", "heads_in"),
    "mlp_norm.scale": ("post_attention_layernorm.weight", "same"),
    "mlp.gate.kernel": ("mlp.gate_proj.weight", "T"),
    "mlp.up.kernel": ("mlp.up_proj.weight", "T"),
    "mlp.down.kernel": ("mlp.down_proj.weight", "T"),
}
TOP_TENSORS = {
    "embed.embedding": ("model.embed_tokens.weight", "same"),
    "final_norm.scale": ("model.norm.weight", "same"),
    "lm_head.kernel": ("lm_head.weight", "T"),
}


class TensorSource(Protocol):
    """Tensors by HF name, in HF layout."""

    description: str
    names: set[str]

    def shape(self, name: str) -> tuple[int, ...]: ...
    def read(self, name: str, ranges: tuple[Range, ...]) -> np.ndarray: ...


# --------------------------------------------------------------------------- config


def config_from_hf(hf: dict, source: str = "config.json", **overrides) -> LlamaConfig:
    """An HF LLaMA config.json (transformers 4 or 5 spelling) as a LlamaConfig."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r} is not supported; only 'llama' "
                         "(LLaMA-2/3, SmolLM2, ...) checkpoints load")
    for key, unsupported in (("hidden_act", lambda v: v != "silu"), ("attention_bias", bool),
                             ("mlp_bias", bool)):
        if key in hf and unsupported(hf[key]):
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported by ff_jax's LLaMA")
    # transformers 5 writes rope_parameters; older files use rope_theta + rope_scaling.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ValueError(f"{source}: rope type {rope_type!r} is not supported (only default and llama3)")
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                              high_freq_factor=float(rope["high_freq_factor"]),
                              original_max_position_embeddings=int(rope["original_max_position_embeddings"]))
    try:
        fields = dict(
            vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
            rope_theta=float(hf.get("rope_theta", rope.get("rope_theta", 10_000.0))),
            rope_scaling=scaling, rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        )
    except KeyError as err:
        raise ValueError(f"{source}: required field {err.args[0]!r} is missing") from err
    fields.update(overrides)
    return LlamaConfig(**fields)


def config_to_hf(cfg: LlamaConfig, dtype: str, tokenizer=None) -> dict:
    scaling = cfg.rope_scaling
    out = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "rope_theta": cfg.rope_theta,
        "rope_scaling": None if scaling is None else {
            "rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings},
        "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings, "torch_dtype": dtype,
    }
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return out


# --------------------------------------------------------------------------- reading


class SafetensorsSource:
    """The tensors of model.safetensors, or of the shards listed in model.safetensors.index.json."""

    def __init__(self, directory: Path, stack: contextlib.ExitStack):
        index_path = directory / "model.safetensors.index.json"
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (directory / "model.safetensors").exists():
            files, weight_map = ["model.safetensors"], None
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")
        self.description = str(directory)
        self._handles, self._file_of = {}, {}
        for name in files:
            path = directory / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: listed in {index_path.name} but missing")
            try:  # "numpy" (not "np") reads bfloat16 through ml_dtypes
                handle = stack.enter_context(safe_open(str(path), framework="numpy"))
            except Exception as err:  # SafetensorError: truncated header/data, bad JSON, ...
                raise ValueError(f"{path}: unreadable safetensors file, truncated or corrupt ({err})") from err
            self._handles[name] = handle
            for key in handle.keys():
                self._file_of[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self._file_of.get(key) != name:
                    raise ValueError(f"{index_path}: tensor '{key}' should be in {name}, but is not there")
        self.names = set(self._file_of)

    def _slice(self, name: str):
        return self._handles[self._file_of[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, ranges: tuple[Range, ...]) -> np.ndarray:
        return self._slice(name)[tuple(slice(a, b) for a, b in ranges)]


def _tensor_for(path: tuple) -> tuple[str, str, Optional[int], bool]:
    """(HF name template, layout, layer index or None, stacked over layers?) of a param path."""
    stacked = path[0] == "layers" and not isinstance(path[1], int)
    key = ".".join(map(str, path[1:] if stacked else path[2:] if path[0] == "layers" else path))
    table = BLOCK_TENSORS if path[0] == "layers" else TOP_TENSORS
    if key not in table:
        raise ValueError(f"parameter {'.'.join(map(str, path))} has no HF LLaMA counterpart")
    name, layout = table[key]
    if path[0] != "layers":
        return name, layout, None, False
    return "model.layers.{}." + name, layout, None if stacked else path[1], stacked


def hf_shape(ours: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "same":
        return ours
    if layout == "T":
        return ours[::-1]
    if layout == "heads_out":
        return (ours[1] * ours[2], ours[0])
    return (ours[2], ours[0] * ours[1])  # heads_in


def _read_ours(source: TensorSource, name: str, layout: str, index: tuple[Range, ...],
               head_dim: int) -> np.ndarray:
    """The block `index` of our layout, reading only the rows/columns of `name` it needs."""
    if layout == "same":
        return source.read(name, index)
    if layout == "T":
        return source.read(name, index[::-1]).T
    if layout == "heads_out":
        (e0, e1), (h0, h1), (d0, d1) = index
        x = source.read(name, ((h0 * head_dim, h1 * head_dim), (e0, e1)))
        return x.T.reshape(e1 - e0, h1 - h0, head_dim)[:, :, d0:d1]
    (h0, h1), (d0, d1), (e0, e1) = index  # heads_in
    x = source.read(name, ((e0, e1), (h0 * head_dim, h1 * head_dim)))
    return x.T.reshape(h1 - h0, head_dim, e1 - e0)[:, d0:d1, :]


_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


def _deeper_layers(names, num_layers: int) -> set:
    """Tensors of blocks at index >= num_layers: left unread when a caller asks for fewer layers than
    the checkpoint holds (`from_pretrained(path, num_layers=4)`), a truncated stack. A config file
    that merely disagrees with its weights stays an error."""
    return {n for n in names if (m := _LAYER_INDEX.match(n)) and int(m.group(1)) >= num_layers}


def load_into_model(cfg: LlamaConfig, source: TensorSource, *, mesh=None, rules: Rules = DEFAULT_RULES,
                    ignore: tuple[str, ...] = (), truncate: bool = False) -> Llama:
    """A Llama whose params are read from `source`, each born in its shard on `mesh` (or on the
    first device). LoRA adapters, absent from checkpoints, get their usual fresh init.
    truncate: the blocks beyond cfg.num_layers are left unread instead of being an error."""
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    flat = [(p, v) for p, v in nnx.to_flat_state(abstract_state) if not isinstance(v, nnx.LoRAParam)]

    # Check every tensor's presence and shape before reading any data.
    plan, wanted = [], set()
    for path, variable in flat:
        template, layout, layer, stacked = _tensor_for(path)
        shape = tuple(variable.get_value().shape)
        per_layer = shape[1:] if stacked else shape
        layers = range(shape[0]) if stacked else [layer]
        names = [template.format(i) for i in layers]
        for name in names:
            if name not in source.names:
                raise ValueError(f"{source.description}: tensor '{name}' is missing")
            expected, found = hf_shape(per_layer, layout), source.shape(name)
            if found != expected:
                raise ValueError(f"{source.description}: tensor '{name}' has shape {list(found)} but the config "
                                 f"implies {list(expected)} (hidden={cfg.hidden_size}, heads={cfg.num_heads}, "
                                 f"kv_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}, mlp="
                                 f"{cfg.intermediate_size}, vocab={cfg.vocab_size})")
        wanted.update(names)
        plan.append((path, variable, names, layout, stacked))
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if truncate:  # asked for by name: a stack of the first blocks
        ignorable |= _deeper_layers(source.names, cfg.num_layers)
    extra = sorted(n for n in source.names - wanted - ignorable
                   if not n.endswith("rotary_emb.inv_freq") and n not in ignore)
    if extra:
        raise ValueError(f"{source.description}: {len(extra)} tensors do not belong to a LLaMA with this config, "
                         f"e.g. {extra[:4]}")

    values = []
    for path, variable, names, layout, stacked in tqdm(plan, desc="loading weights", leave=False):
        dtype = variable.get_value().dtype
        shape = tuple(variable.get_value().shape)
        sharding = _sharding(variable, shape, mesh, rules)
        cache: dict = {}  # replicated shards ask for the same block: read it once per tensor

        def block(index, names=names, layout=layout, stacked=stacked, shape=shape, dtype=dtype, cache=cache):
            ranges = tuple(s.indices(n)[:2] for s, n in zip(index or (slice(None),) * len(shape), shape))
            if ranges not in cache:
                if stacked:
                    (l0, l1), rest = ranges[0], ranges[1:]
                    x = np.stack([_read_ours(source, names[i], layout, rest, cfg.head_dim) for i in range(l0, l1)])
                else:
                    x = _read_ours(source, names[0], layout, ranges, cfg.head_dim)
                cache[ranges] = np.ascontiguousarray(x, dtype=dtype)
            return cache[ranges]

        values.append((path, variable.replace(jax.make_array_from_callback(shape, sharding, block))))
    states = [nnx.from_flat_state(values)]
    if cfg.lora_rank:
        states.append(_fresh_lora(cfg, abstract_state, mesh, rules))
    return nnx.merge(graphdef, *states)


def _sharding(variable, shape, mesh, rules):
    if mesh is None:
        return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    axes = variable.get_metadata().get("logical_axes") or (None,) * len(shape)
    return jax.sharding.NamedSharding(mesh, logical_to_spec(axes, dict(mesh.shape), rules, shape))


def _fresh_lora(cfg, abstract_state, mesh, rules):
    """Fresh LoRA adapters, each placed in its shards: A ~ N(0, 1/rank^2) and B = 0, as Projection
    initialises them (B = 0 makes a fresh adapter a no-op). Drawn with numpy on the host (adapters
    are small): jitting the model's init instead costs seconds of XLA compile."""
    rng = np.random.default_rng(0)
    values = []
    for path, variable in nnx.to_flat_state(abstract_state):
        if not isinstance(variable, nnx.LoRAParam):
            continue
        shape, dtype = variable.get_value().shape, variable.get_value().dtype
        if path[-1] == "lora_a":
            full = (rng.standard_normal(shape, np.float32) / cfg.lora_rank).astype(dtype)
        else:
            full = np.zeros(shape, dtype)
        array = jax.make_array_from_callback(shape, _sharding(variable, shape, mesh, rules),
                                             lambda index, full=full: full[index])
        values.append((path, variable.replace(array)))
    return nnx.from_flat_state(values)


def load_hf(directory: str | Path, *, mesh=None, rules: Rules = DEFAULT_RULES, **config_overrides) -> Llama:
    """An HF LLaMA directory (config.json + one or many safetensors) as a Llama."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json (is this an HF model directory?)")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid JSON ({err})") from err
    cfg = config_from_hf(hf, str(config_path), **config_overrides)
    with contextlib.ExitStack() as stack:
        return load_into_model(cfg, SafetensorsSource(directory, stack), mesh=mesh, rules=rules,
                               truncate="num_layers" in config_overrides)
