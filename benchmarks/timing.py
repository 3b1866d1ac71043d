"""How benchmarks/ time a call: wall seconds of calls made after a warm-up call (compilation,
caches), so each script reports the statistic it names (the median, or the least disturbed min)."""

import time


def seconds(fn) -> float:
    """Wall seconds of one call of fn."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeated(fn, repeats: int, warm_up=None) -> tuple[list[float], object]:
    """(wall seconds of each of `repeats` calls of fn after one call of warm_up (default: fn
    itself), the last call's result)."""
    result = (warm_up or fn)()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result
