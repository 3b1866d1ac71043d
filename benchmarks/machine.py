"""The machine a benchmark ran on, recorded next to its figures (timings mean little without it).

The benchmark scripts run as `python benchmarks/<name>.py`, so this folder is on sys.path and they
import it as `from machine import describe`.
"""

import importlib.metadata
import os
import platform


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(*packages: str) -> dict:
    """CPU, cores this process may use, memory, Python, the given packages' versions, XLA flags and
    the 1-minute load average (other processes skew timings: a high one means re-run)."""
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {name: importlib.metadata.version(name) for name in packages}
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "memory_gb": round(memory_gb, 1),
            "python": platform.python_version(), **versions, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average": os.getloadavg()[0]}
