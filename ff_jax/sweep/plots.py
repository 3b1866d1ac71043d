"""The sweep's PNG plots, from its summary table: recall and the popularity correlation by variant
(bars with the seed spread), and recall against embedding width."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ff_jax.sweep.summary import mean_std


def plot(table: pd.DataFrame, out: Path) -> list[Path]:
    """recall.png (test recall@10 at full width: bars with the seed spread), recall_by_width.png
    (when several widths were measured) and popularity_correlation.png; returns what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(table["variant"]))
    written = []

    def bars(values_of, ylabel: str, name: str):
        fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(variants), 3.2))
        for x, v in enumerate(variants):
            values = [y for y in values_of(table[table["variant"] == v]) if np.isfinite(y)]
            mean, std, n = mean_std(values)
            ax.bar(x, mean, yerr=std if n > 1 else None, color="#8ab", capsize=4)
            ax.scatter([x] * len(values), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    def at_full_width(rows: pd.DataFrame, metric: str) -> list[float]:
        return [row.get(f"test/{metric}/all/d{int(row['width'])}", math.nan) for _, row in rows.iterrows()]

    bars(lambda rows: at_full_width(rows, "recall@10"), "test recall@10 (full width)", "recall.png")
    if "test/popularity_spearman" in table:
        bars(lambda rows: rows["test/popularity_spearman"].tolist(), "popularity–similarity Spearman",
             "popularity_correlation.png")
    widths = sorted({int(c.rsplit("/d", 1)[1]) for c in table.columns
                     if c.startswith("test/recall@10/all/d")})
    if len(widths) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for v in variants:
            rows = table[table["variant"] == v]
            points = [(w, mean_std(rows[f"test/recall@10/all/d{w}"].tolist())) for w in widths]
            points = [(w, m, s) for w, (m, s, n) in points if n]
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[0 if math.isnan(p[2]) else p[2] for p in points], marker="o", capsize=3, label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding width")
        ax.set_ylabel("test recall@10")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "recall_by_width.png", dpi=110)
        plt.close(fig)
        written.append(out / "recall_by_width.png")
    return written
