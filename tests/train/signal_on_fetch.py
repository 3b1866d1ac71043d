"""ToyData whose training iterator sends its own process SIGTERM while reading one batch: the gap
between a step's stop check and the next step, where a stop once ended training without saving
the step it had reached. Import it from a gin file with `import signal_on_fetch`."""

import dataclasses
import json
import os
import signal

import gin

from toy_data import ToyData


class _SignalOnFetch:
    """`inner` (a grain iterator), raising SIGTERM as batch number `at` (from 1) is read."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.fetched = inner, at, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.fetched += 1
        if self.fetched == self.at:
            os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread before next() returns
        return batch

    # grain's checkpoint handler: bytes for an iterator that is not its own DatasetIterator.
    def get_state(self) -> bytes:
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.inner.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        self.inner.start_prefetch()


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SignalOnFetchData(ToyData):
    sigterm_at_batch: int = 0  # 0: never

    def train_iterator(self, tokenizer, num_shards: int):
        return _SignalOnFetch(super().train_iterator(tokenizer, num_shards), self.sigterm_at_batch)
