"""The dataset variants a sweep's runs read: `prepare_data` builds, through the sweep file's
`prepare = NAME` (ff_jax.sweep.preparations), the variant each run's `[variants.X.data]` asks for
(numbers quantised / raw / absent, history from positives or every impression), and
`data_bindings` points a run's training at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from ff_jax.sweep.preparations import PREPARATIONS, compact_paths
from ff_jax.sweep.sweep_file import Sweep, Variant


def _data_key(variant: Variant) -> tuple[Optional[str], Optional[str]]:
    return variant.data.get("numbers"), variant.data.get("history_source")


def data_bindings(sweep: Sweep, variant: Variant, data_dir: Path) -> dict[str, Any]:
    """The bindings that point a run at its data (computed, nothing prepared: --dry_run uses them)."""
    numbers, history = _data_key(variant)
    if sweep.prepare == "compact_feed_world":
        root, config, _, tokenizer = compact_paths(data_dir, numbers, history)
        out: dict[str, Any] = {"DATA_DIR": str(root), "TOKENIZER": str(tokenizer), "DATASET_CONFIG": config}
    elif sweep.prepare == "movielens":
        out = {"DATA_DIR": str(data_dir), "DATASET_CONFIG": "100k" + (f"_{history}" if history else "")}
    else:
        out = {"DATA_DIR": str(data_dir)}
    return {**out, **({"FeedData.numbers": numbers} if numbers else {})}


def prepare_data(sweep: Sweep, data_dir: Path, log: Callable[[str], None] = print) -> None:
    """Prepares every dataset variant the sweep's runs read (each once; a prepared one is reused)."""
    if not sweep.prepare:
        return
    for numbers, history in dict.fromkeys(_data_key(v) for v in sweep.variants):
        log(f"preparing {sweep.prepare} (numbers {numbers or 'quantile'}, history {history or 'positives'}) "
            f"under {data_dir}")
        PREPARATIONS[sweep.prepare](data_dir, numbers, history)
