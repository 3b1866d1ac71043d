"""What a command shows besides its own results and progress bars: other libraries' logs and bars.

`--verbosity` takes absl's levels: -2 errors only, -1 warnings too (the default), 0 INFO logs
(absl, orbax, jax, grain, ray), 1 debug logs (and the CLI then shows tracebacks instead of one-line
errors).
"""

import logging

from absl import logging as absl_logging

# Python loggers of the libraries a command runs; absl's own goes through absl_logging.
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "grain", "etils", "ray")


def python_level(verbosity: int) -> int:
    if verbosity <= -2:
        return logging.ERROR
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)


def apply(verbosity: int) -> None:
    """Sets every library's log level from one absl verbosity."""
    level = python_level(verbosity)
    absl_logging.set_verbosity(max(verbosity, absl_logging.ERROR))
    logging.getLogger().setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
