"""Will one training step fit in memory? Asked of XLA's compiled step before it first runs.

XLA allocates a whole step's buffers at once, so a step that is too large fails at its first run
with RESOURCE_EXHAUSTED (asking, say, for 30 GB on a 24 GB machine) after minutes of compiling
and loading. The compiled executable already knows its footprint (`memory_analysis()`: arguments,
outputs, temporaries); `check_step_fits` compares that with the device's memory and refuses early,
naming the settings that shrink a step.
"""

from __future__ import annotations

import dataclasses
import os
import resource
from typing import Optional

import jax

from ff_jax.model.sharding import use_rules

GIB = 2**30

# What a user can turn, in the words of the gin bindings that set it.
KNOBS = ("BatchConfig.examples_per_shard (examples per device and step)",
         "BatchConfig.member_rows / item_rows / length (tokens per step)",
         "OptimizerConfig.accumulation_steps (the same global batch in smaller micro-steps)",
         "train.model_overrides remat=True with scan_layers=True (recompute activations per layer)",
         "train.model_overrides lora_rank=N (adapters only: no optimiser state for the backbone)")


class StepTooLarge(ValueError):
    """The compiled step needs more memory than the device has."""


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes one compiled step holds on one device, by XLA's analysis."""

    arguments: int  # train state + batch
    outputs: int
    aliased: int  # outputs written in place of donated arguments (counted once)
    temporaries: int  # activations, gradients, optimiser scratch

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries

    def describe(self) -> str:
        return (f"{self.total / GIB:.2f} GiB per device (arguments {self.arguments / GIB:.2f}, outputs "
                f"{self.outputs / GIB:.2f}, of which {self.aliased / GIB:.2f} in place of donated arguments; "
                f"temporaries {self.temporaries / GIB:.2f})")


def step_memory(compiled) -> Optional[StepMemory]:
    """XLA's memory analysis of a compiled step (None where the backend gives none)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return StepMemory(arguments=int(stats.argument_size_in_bytes), outputs=int(stats.output_size_in_bytes),
                      aliased=int(stats.alias_size_in_bytes), temporaries=int(stats.temp_size_in_bytes))


def compiled_step_memory(jitted, args: tuple, mesh, rules) -> Optional[StepMemory]:
    """Compiles `jitted` for `args` (jit's cache keeps the executable for the first real call)."""
    with jax.set_mesh(mesh), use_rules(rules):
        return step_memory(jitted.lower(*args).compile())


def device_memory_bytes(mesh=None) -> Optional[int]:
    """Memory one device of `mesh` may use: the accelerator's limit, or for CPU devices the host's
    physical memory shared among this process's devices in the mesh (they allocate from one pool).
    Physical, not currently available: the answer must not change with whatever else happens to
    run. None when unknown."""
    local = [d for d in (mesh.devices.flat if mesh is not None else jax.local_devices())
             if d.process_index == jax.process_index()]
    device = local[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        total = _host_memory_bytes()
        return None if total is None else total // max(len(local), 1)
    return None


def _host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_step_fits(memory: Optional[StepMemory], limit_bytes: Optional[int]) -> None:
    """Raises StepTooLarge, naming the knobs, when the step needs more than `limit_bytes`."""
    if memory is None or limit_bytes is None or memory.total <= limit_bytes:
        return
    knobs = "\n  - ".join(KNOBS)
    raise StepTooLarge(f"one training step needs {memory.describe()}, but the device has "
                       f"{limit_bytes / GIB:.2f} GiB. Shrink the step with:\n  - {knobs}")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
