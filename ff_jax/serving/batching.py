"""Micro-batching: concurrent requests wait up to `max_delay` seconds for company, then run as
one batch of at most `max_batch`, so the towers see batches rather than single prompts.

Requests queue on the event loop; one worker takes the first waiting request, gathers what
else arrives within the delay (or until the batch is full), and runs `process(batch)` in a
single worker thread (the model and index are used by one batch at a time). Each request gets its
own result, or the exception its part raised; `process` returns one result or exception per item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any


class MicroBatcher:
    def __init__(self, process: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int, max_delay: float,
                 executor: concurrent.futures.Executor, observe: Callable[[int, list[float]], None] = lambda n, q: None):
        if max_batch < 1 or max_delay < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay >= 0, got {max_batch}, {max_delay}")
        self.process, self.max_batch, self.max_delay = process, max_batch, max_delay
        self.executor, self.observe = executor, observe
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_delay
            while len(batch) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(timeout, 0)))
                except asyncio.TimeoutError:
                    break
            started = time.perf_counter()
            self.observe(len(batch), [started - queued for _, _, queued in batch])
            try:
                results = await loop.run_in_executor(self.executor, self.process, [item for item, _, _ in batch])
            except Exception as err:  # noqa: BLE001  (the whole batch failed: every request hears why)
                results = [err] * len(batch)
            for (_, future, _), result in zip(batch, results):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
