"""What a command shows besides its own results and progress bars: other libraries' logs and bars.

`--verbosity` takes absl's levels: -2 errors only, -1 warnings too (the default), 0 INFO logs
(absl, orbax, jax, grain, TFDS) and TFDS's progress bars ("Generating splits...", "Shuffling
..."), 1 debug logs (and the CLI then shows tracebacks instead of one-line errors).
"""

import logging

from absl import logging as absl_logging

# Python loggers of the libraries a command runs; absl's own goes through absl_logging.
LIBRARY_LOGGERS = ("absl", "jax", "orbax", "grain", "tensorflow_datasets", "etils", "array_record")
# Warnings about things ff_jax does on purpose, shown only from --verbosity=0: TFDS warns on every
# builder config made at run time (the demo's compact prompts, the numbers ablations).
EXPECTED_WARNINGS = ("Using custom data configuration",)


class _DropExpected(logging.Filter):
    def __init__(self, verbosity: int):
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbosity >= 0 or not any(text in str(record.msg) for text in EXPECTED_WARNINGS)


def python_level(verbosity: int) -> int:
    if verbosity <= -2:
        return logging.ERROR
    return {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)


def apply(verbosity: int) -> None:
    """Sets every library's log level and TFDS's progress bars from one absl verbosity."""
    level = python_level(verbosity)
    absl_logging.set_verbosity(max(verbosity, absl_logging.ERROR))
    logging.getLogger().setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    absl_logger = logging.getLogger("absl")
    for old in [f for f in absl_logger.filters if isinstance(f, _DropExpected)]:
        absl_logger.removeFilter(old)
    absl_logger.addFilter(_DropExpected(verbosity))
    # Imported here: TFDS takes about a second to import, and only commands (which load it anyway to
    # read data) call this, never `--help`.
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(verbosity >= 0)
