"""Logical axis names → mesh axes: one rule table, a mesh factory, params born sharded.

Parameters and activations name logical axes ("batch", "embed", "heads", ...). A rule table maps
each name to mesh axes ("data", "fsdp", "tensor"). A name may have several rules; the first whose
mesh axes are still free in that array, and divide its dimension, wins — so "embed" is sharded
over fsdp on weights but left whole on activations whose batch already uses fsdp.
"""

import contextlib
import math
from typing import Callable, Optional, Sequence

import gin
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MeshAxes = Optional[str | tuple[str, ...]]
Rules = tuple[tuple[str, MeshAxes], ...]

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("lora", None),
)

_current_rules: list[Rules] = [DEFAULT_RULES]


@gin.configurable
def logical_axis_rules(rules: Rules = DEFAULT_RULES) -> Rules:
    """The rule table; bind `logical_axis_rules.rules` in gin to change it."""
    return tuple((name, tuple(mesh) if isinstance(mesh, list) else mesh) for name, mesh in rules)


@contextlib.contextmanager
def use_rules(rules: Rules):
    """Makes `rules` the table that `constrain` uses inside the block."""
    _current_rules.append(rules)
    try:
        yield
    finally:
        _current_rules.pop()


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None, num_devices: int = 0) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh over all devices (the first `num_devices` when > 0, e.g. one
    device for a CPU-sized run from gin); -1 takes whatever the other axes leave."""
    devices = list(devices if devices is not None else jax.devices())
    devices = devices[:num_devices] if num_devices > 0 else devices
    sizes = [data, fsdp, tensor]
    known = math.prod(s for s in sizes if s != -1)
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                         f"{math.prod(sizes)} devices, have {len(devices)}")
    device_grid = np.asarray(devices).reshape(sizes)
    return jax.sharding.Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(logical_axes: Sequence[Optional[str]], mesh_shape: dict[str, int],
                    rules: Rules, shape: Optional[Sequence[int]] = None) -> PartitionSpec:
    """Resolves logical names to a PartitionSpec for a mesh of the given axis sizes."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        chosen = None
        for rule_name, mesh_axes in rules:
            if rule_name != name or mesh_axes is None:
                continue
            axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            axes = tuple(a for a in axes if a in mesh_shape)
            if not axes or used.intersection(axes):
                continue
            size = math.prod(mesh_shape[a] for a in axes)
            if shape is not None and shape[i] % size:
                continue  # e.g. SmolLM2's 3 kv heads over tensor=2: replicate instead
            chosen = axes[0] if len(axes) == 1 else axes
            used.update(axes)
            break
        spec.append(chosen)
    return PartitionSpec(*spec)


def batch_shards(mesh: jax.sharding.Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the mesh splits the logical batch axis (the N of a global batch)."""
    entry = logical_to_spec(("batch",), dict(mesh.shape), rules)[0]
    axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[a] for a in axes)


def constrain(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """Pins an activation's sharding by logical names; a no-op outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, dict(mesh.shape), _current_rules[-1], x.shape)
    return jax.lax.with_sharding_constraint(x, spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules: Rules):
    """NamedShardings for every variable of a (possibly abstract) NNX state."""
    mesh_shape = dict(mesh.shape)

    def one(variable):
        axes = variable.get_metadata().get("logical_axes")
        shape = variable.get_value().shape
        if axes is None:
            axes = (None,) * len(shape)
        return variable.replace(NamedSharding(mesh, logical_to_spec(axes, mesh_shape, rules, shape)))

    return jax.tree.map(one, abstract_state, is_leaf=_is_variable)


def create_sharded(module_factory: Callable[[], nnx.Module], mesh: jax.sharding.Mesh,
                   rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Builds a module whose parameters are created directly in their shards.

    The factory runs inside one jit with out_shardings, so no device (or host) ever holds a
    full copy of a parameter that is meant to be split.
    """
    graphdef, abstract_state = nnx.split(nnx.eval_shape(module_factory))
    shardings = state_shardings(abstract_state, mesh, rules)
    with jax.set_mesh(mesh), use_rules(rules):
        state = jax.jit(lambda: nnx.state(module_factory()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)
