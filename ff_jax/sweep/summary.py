"""The sweep's tables: one summary.csv row per run (bindings, stage seconds, every metric by cohort
and width) and summary.md (metrics by variant, mean ± sample std over seeds)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ff_jax.sweep.runs import RECORD, STAGES, Run
from ff_jax.sweep.sweep_file import Sweep, gin_text
from ff_jax.train.layout import METRICS_JSONL


def flatten_metrics(report: dict) -> dict[str, float]:
    """An eval report (metrics_test.json) as flat columns: test/<metric>/<cohort>/d<width>,
    test/popularity_<kind>, test/ann_recall@K, baseline/<name>/<metric>/<cohort>. Fresh and seen
    targets (their item had no engagement in training, or had) are cohorts `fresh` / `seen`, with
    their `targets` count."""
    out = {}
    for dim, by_dim in report["by_dim"].items():
        for cohort, values in {**by_dim["metrics"], **by_dim.get("freshness", {})}.items():
            out.update({f"test/{m}/{cohort}/d{dim}": float(v) for m, v in values.items() if m != "users"})
    for kind in ("spearman", "pearson_log"):
        if kind in report.get("popularity_similarity", {}):
            out[f"test/popularity_{kind}"] = float(report["popularity_similarity"][kind])
    out.update({f"test/{k}": float(v) for k, v in report.get("ann", {}).items() if k.startswith("ann_recall")})
    for name, baseline in report.get("baselines", {}).items():
        for cohort, values in {**baseline["metrics"], **baseline.get("freshness", {})}.items():
            out.update({f"baseline/{name}/{m}/{cohort}": float(v) for m, v in values.items() if m != "users"})
    return out


def last_logged(jsonl: Path) -> dict[str, float]:
    """The last validation record (validation/<key>) and the last training loss (train/loss)."""
    last: dict[str, dict] = {}
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        last[record.get("split", "train")] = record
    out = {f"validation/{k}": float(v) for k, v in last.get("validation", {}).items() if k not in ("step", "split")}
    if "loss" in last.get("train", {}):
        out["train/loss"] = float(last["train"]["loss"])
        out["train/steps"] = float(last["train"]["step"])
    return out


def summary_rows(runs: Sequence[Run], results: Path) -> pd.DataFrame:
    """One row per run with results under <results>/runs/: variant, seed, its bindings, stage
    seconds and every metric."""
    rows = []
    for run in runs:
        folder = results / "runs" / run.name
        if not (folder / "metrics_test.json").exists():
            continue
        record = json.loads((folder / RECORD).read_text())
        report = json.loads((folder / "metrics_test.json").read_text())
        row: dict[str, Any] = {"variant": run.variant.name, "seed": run.seed, "width": report["width"]}
        row.update({f"bind:{k}": gin_text(v, k) for k, v in run.variant.train.items()})
        row.update({f"data:{k}": v for k, v in run.variant.data.items()})
        row.update({f"{stage}_seconds": round(record["seconds"].get(stage, math.nan), 1) for stage in STAGES})
        row.update(last_logged(folder / METRICS_JSONL))
        row.update(flatten_metrics(report))
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1), n) of the finite values; std is NaN below 2."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(x):
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x)


def format_mean_std(values: Sequence[float]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "—"
    digits = 1 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f} (1 seed)"


def headline_columns(table: pd.DataFrame) -> list[str]:
    """The rows of summary.md, in this order: test recall/NDCG at the full width (all members),
    recall@10 by cohort (new / established members, fresh / seen targets), recall@10 at every other
    width (Matryoshka slices), the popularity correlation, the baselines' recall@10 (all targets and
    fresh ones), validation recall@10 per width (slices, PCA), the final training loss and the
    training time."""
    full = {f"d{w}" for w in table["width"].dropna().astype(int)} if "width" in table else set()
    groups: list[list[str]] = [[] for _ in range(7)]
    for column in table.columns:
        parts = column.split("/")
        if column.startswith("test/") and len(parts) == 4:
            _, metric, cohort, dim = parts
            if dim in full and metric in ("recall@10", "recall@100", "ndcg@10") and cohort == "all":
                groups[0].append(column)
            elif dim in full and metric == "recall@10":
                groups[1].append(column)
            elif metric == "recall@10" and cohort == "all":
                groups[2].append(column)
        elif column.startswith("test/popularity_"):
            groups[3].append(column)
        elif column.startswith("baseline/") and column.endswith(("/recall@10/all", "/recall@10/fresh")):
            groups[4].append(column)
        elif column.startswith("validation/recall@10"):
            groups[5].append(column)
        elif column in ("train/loss", "train_seconds"):
            groups[6].append(column)
    return [c for group in groups for c in group]


def summary_markdown(sweep: Sweep, table: pd.DataFrame) -> str:
    """Metrics (rows) by variant (columns), each cell the mean ± sample std over seeds."""
    variants = list(dict.fromkeys(table["variant"]))
    lines = [f"# Sweep `{sweep.name}`", "", sweep.description.strip(), "",
             f"Base: {', '.join(sweep.gin_files)}; seeds {list(sweep.seeds)}; cells are mean ± sample "
             "standard deviation over the seeds that finished.", ""]
    for v in sweep.variants:
        if v.name in variants:
            what = ", ".join(f"{k}={gin_text(x, k)}" for k, x in {**v.train, **v.data}.items()) or "the base"
            n = int((table["variant"] == v.name).sum())
            lines.append(f"- `{v.name}` ({n} run{'s' * (n != 1)}): {what}")
    lines += ["", "| metric | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for column in headline_columns(table):
        cells = [format_mean_std(table.loc[table["variant"] == v, column].tolist()) for v in variants]
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
