"""Where training metrics go: a tqdm bar, TensorBoard event files, and a JSONL log in the workdir.

TensorBoard files are written with tensorboardX (a core dependency; no TensorFlow needed), through
its synchronous EventsWriter: SummaryWriter's background thread reports a failed write (a full disk)
only at exit, from an atexit hook. A write that fails raises MetricsLogError at the step it fails.
Only process 0 writes, so a multi-host run logs once.
"""

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from ff_jax.train.layout import METRICS_JSONL, TENSORBOARD


def _scalars(metrics: dict) -> dict:
    metrics = jax.device_get(metrics)  # one transfer for all of them, not one per metric
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _tensorboardx():
    """(EventsWriter, Event, scalar), imported when first used (tensorboardX pulls in protobuf).

    tensorboardX's package import also imports torch when it is installed, only to recognise torch
    tensors, which we never pass: 0.17 GiB of resident memory in every training process (torch is a
    test dependency). torch is hidden while tensorboardX loads, unless something already imported it.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
    finally:
        if hide:
            del sys.modules["torch"]
    return EventsWriter, Event, scalar


class MetricsLogError(OSError):
    """metrics.jsonl or the TensorBoard events could not be written."""

    label = "metrics log write failed"


class MetricsLog:
    """`log(step, metrics)` after each step; `close()` at the end.

    examples/s and tokens/s are measured between consecutive log calls from the `examples` and
    `tokens` counts in the step metrics (wall clock, so they include input and host overhead).
    """

    def __init__(self, workdir: str | Path, total_steps: int, initial_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.is_writer = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._jsonl = open(self.workdir / METRICS_JSONL, "a") if self.is_writer else None
        self._tb = None
        if tensorboard and self.is_writer:
            EventsWriter, self._event, self._scalar = _tensorboardx()
            with self._writing(TENSORBOARD):
                (self.workdir / TENSORBOARD).mkdir(exist_ok=True)
                self._tb = EventsWriter(str(self.workdir / TENSORBOARD / "events"))
        self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                         disable=not (progress and self.is_writer), dynamic_ncols=True)
        self._last_time: Optional[float] = None

    def log(self, step: int, metrics: dict, split: str = "train") -> dict:
        """Writes one record; returns the scalars written (with rates added for training)."""
        values = _scalars(metrics)
        if split == "train":
            now = time.perf_counter()
            if self._last_time is not None:
                elapsed = max(now - self._last_time, 1e-9)
                values["examples_per_s"] = values.get("examples", 0.0) / elapsed
                values["tokens_per_s"] = values.get("tokens", 0.0) / elapsed
            self._last_time = now
            self._bar.update(step - self._bar.n)
            shown = {"loss": f"{values.get('loss', float('nan')):.4f}"}
            if "examples_per_s" in values:
                shown["ex/s"] = f"{values['examples_per_s']:.1f}"
                shown["tok/s"] = f"{values['tokens_per_s']:.0f}"
            self._bar.set_postfix(shown, refresh=False)
        if self.is_writer:
            with self._writing(METRICS_JSONL):
                self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
                self._jsonl.flush()
            if self._tb is not None:
                now = time.time()
                with self._writing(TENSORBOARD):
                    for key, value in values.items():  # TensorBoard tags allow no '@'
                        summary = self._scalar(f"{split}/{key.replace('@', '_at_')}", value)
                        self._tb.write_event(self._event(wall_time=now, step=step, summary=summary))
        return values

    @contextlib.contextmanager
    def _writing(self, name: str):
        try:
            yield
        except OSError as err:
            raise MetricsLogError(f"{self.workdir / name}: {err}") from err

    def pause_clock(self) -> None:
        """Forget the last time stamp (after validation or a checkpoint wait), so rates stay honest."""
        self._last_time = None

    def close(self, raise_errors: bool = True) -> None:
        """Flushes and closes the files; a failed write (a full disk) raises MetricsLogError unless
        `raise_errors` is False (an error is already on its way out)."""
        self._bar.close()
        failures = []
        for name, writer in ((METRICS_JSONL, self._jsonl), (TENSORBOARD, self._tb)):
            try:
                with self._writing(name):
                    if writer is not None:
                        writer.close()
            except MetricsLogError as err:
                failures.append(err)
        self._jsonl = self._tb = None
        if failures and raise_errors:
            raise failures[0]


def read_jsonl(path: str | Path, split: str = "train") -> list[dict]:
    """The records of one split, in file order (a resumed run appends after the old lines)."""
    with open(path) as f:
        return [r for r in map(json.loads, f) if r.get("split") == split]
