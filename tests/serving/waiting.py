"""Bounded waits for a server to become ready: a server that never does fails its test with what it
last said, instead of holding the run until CI's own limit."""

import time

READY_WITHIN_S = 300  # warm-up compiles every served shape: seconds on a laptop, minutes on a busy 2-core CI host


def wait_until(done, what: str, last_said=lambda: "", within_s: float = READY_WITHIN_S, every_s: float = 0.05):
    """Calls `done()` every `every_s` until it is true; AssertionError naming `what` after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(every_s)
    raise AssertionError(f"{what} not within {within_s:.0f} s: {last_said()}")
