"""Stopping a run cleanly: SIGTERM (a scheduler's preemption notice, `timeout`) or SIGINT (Ctrl-C)
sets a flag that the training loop reads after each step and between validation batches; the loop
then saves that step and exits. A second SIGINT raises KeyboardInterrupt at once. Under
jax.distributed the preemption notifier owns SIGTERM instead (Checkpointer.preempted)."""

import signal
import threading
from typing import Optional

import jax


class StopSignals:
    def __init__(self):
        self._stop = threading.Event()
        self.name: Optional[str] = None  # "SIGTERM" or "SIGINT", once one arrived
        self._previous_handlers: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        if jax.process_count() > 1:
            return  # jax.distributed's preemption notifier owns SIGTERM
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._stop.is_set():
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        self._stop.set()

    def uninstall(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def requested(self) -> bool:
        return self._stop.is_set()
