"""Where training metrics go: a tqdm bar, TensorBoard event files, and a JSONL log in the workdir.

TensorBoard files are written with tensorboardX (a core dependency; no TensorFlow needed). Only
process 0 writes, so a multi-host run logs once.
"""

import json
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from tqdm.auto import tqdm


def _scalars(metrics: dict) -> dict:
    metrics = jax.device_get(metrics)  # one transfer for all of them, not one per metric
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


class MetricsLog:
    """`log(step, metrics)` after each step; `close()` at the end.

    examples/s and tokens/s are measured between consecutive log calls from the `examples` and
    `tokens` counts in the step metrics (wall clock, so they include input and host overhead).
    """

    def __init__(self, workdir: str | Path, total_steps: int, initial_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.is_writer = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._jsonl = open(self.workdir / "metrics.jsonl", "a") if self.is_writer else None
        self._tb = None
        if tensorboard and self.is_writer:
            from tensorboardX import SummaryWriter  # imported when used: it pulls in protobuf

            self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"))
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
            self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
            self._jsonl.flush()
            if self._tb is not None:
                for key, value in values.items():  # TensorBoard tags allow no '@'
                    self._tb.add_scalar(f"{split}/{key.replace('@', '_at_')}", value, step)
        return values

    def pause_clock(self) -> None:
        """Forget the last time stamp (after validation or a checkpoint wait), so rates stay honest."""
        self._last_time = None

    def close(self) -> None:
        self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_jsonl(path: str | Path, split: str = "train") -> list[dict]:
    """The records of one split, in file order (a resumed run appends after the old lines)."""
    with open(path) as f:
        return [r for r in map(json.loads, f) if r.get("split") == split]
