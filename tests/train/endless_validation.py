"""ToyData whose validation never ends, for the stop-signal test: only a signal can interrupt it.
It creates `started_file` when validation begins, so the test knows when to send the signal.
Import it from a gin file with `import endless_validation` (PYTHONPATH must hold tests/train)."""

import dataclasses
import itertools
from pathlib import Path

import gin

from ff_jax.data.feed_data import Validation
from toy_data import ToyData


class _EndlessPairs:
    """The same validation pair batch again and again; touches `started` when iterated."""

    def __init__(self, batch, started: Path):
        self.batch, self.started = batch, started

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, index: int):
        return self.batch

    def __iter__(self):
        self.started.touch()
        return itertools.repeat(self.batch)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EndlessValidationData(ToyData):
    started_file: str = ""

    def validation(self, tokenizer, num_shards: int):
        batch = next(self.train_iterator(tokenizer, num_shards))
        return Validation(_EndlessPairs(batch, Path(self.started_file)), [], [], {}, {})
