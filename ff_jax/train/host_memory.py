"""Host memory when the device is the CPU, whose memory is the process's own.

A SmolLM2-135M training step that XLA planned at 3.39 GiB peaked at 5.49 GiB of resident memory
by its second step (measured with VmRSS around each phase of the loop; docs/training_overview.md,
"SmolLM2-135M on the 24 GB CPU machine"). Three causes, each with its remedy here:

- glibc keeps freed blocks for reuse. XLA:CPU frees a step's temporaries (GiBs, in buffers of a
  few MiB) at its end, and glibc's moving mmap threshold had put such buffers on its heaps, whose
  free pages stay resident; the next step then allocated beside them. `keep_large_buffers_mapped`
  fixes the threshold, so each buffer of 1 MiB or more is mapped on its own and unmapped when freed.
- One-off work leaves free heap pages behind: compiling (0.3 GiB) and an orbax save (1.4 GiB of
  host copies). `release_free_memory` (malloc_trim) hands them back to the OS.
- XLA:CPU's default schedule runs independent ops side by side, keeping more buffers live at once.
  Its memory-minimising schedule cut the step's plan from 3.39 to 3.03 GiB, but it is read only from
  XLA_FLAGS (as a per-compile option it is accepted and ignored: the plan stayed at 3.39), so
  `prefer_memory_schedule` adds it there before the backend starts.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
from pathlib import Path
from typing import MutableMapping

MEMORY_SCHEDULE_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
_FLAG_NAME = MEMORY_SCHEDULE_FLAG.split("=")[0].lstrip("-")
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
MAPPED_FROM_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def _glibc():
    """The C library when it is glibc (it has malloc_trim), else None: elsewhere these are no-ops."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def keep_large_buffers_mapped() -> bool:
    """Buffers of MAPPED_FROM_BYTES or more get their own mapping, returned to the OS when freed,
    for the rest of the process. It cost the 2-layer MovieLens model 2-4% of its step rate on this
    machine (within noise)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, MAPPED_FROM_BYTES))


def release_free_memory() -> bool:
    """Returns the heaps' free pages to the OS; True when glibc did release some."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


@functools.lru_cache(maxsize=None)
def _jaxlib_knows(flag_name: str) -> bool:
    """Whether a jaxlib library carries `flag_name`: XLA aborts the process at start-up on a flag it
    does not know, so a flag a later jaxlib dropped must not be set. The name is a string in the
    library that registers the flag; the search reads the files through mmap (about 50 ms)."""
    try:
        import jaxlib  # not jax: importing jaxlib starts no backend
    except ImportError:
        return False
    needle = flag_name.encode()
    for library in Path(jaxlib.__file__).parent.glob("*.so"):
        try:
            with open(library, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data.find(needle) >= 0:
                    return True
        except (OSError, ValueError):  # unreadable, or empty (mmap refuses size 0)
            continue
    return False


def prefer_memory_schedule(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds MEMORY_SCHEDULE_FLAG to XLA_FLAGS, unless XLA_FLAGS already names the flag (the user's
    setting wins) or this jaxlib does not know it. Call before JAX's backend starts: XLA reads
    XLA_FLAGS once. Returns whether the flag is now set. It changes only XLA:CPU's compiles."""
    current = environ.get("XLA_FLAGS", "")
    if _FLAG_NAME in current:
        return MEMORY_SCHEDULE_FLAG in current.split()
    if not _jaxlib_knows(_FLAG_NAME):
        return False
    environ["XLA_FLAGS"] = f"{current} {MEMORY_SCHEDULE_FLAG}".strip()
    return True
