"""Hyper-parameters chosen on the validation split: fit every grid point, keep the best, never look at test.

    best, table = select_on_validation(lambda **p: ALS(**p), {"reg": [3, 10], "alpha": [1, 5]},
                                       training_data(tables, splits, "validation"), splits.validation)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData
from ff_jax.retrieval.recommender_eval import evaluate_recommender


def select_on_validation(make: Callable[..., Recommender], grid: Mapping[str, Sequence], data: TrainingData,
                         members: Sequence[EvalMember], metric: str = "recall@10", cohort: str = "all",
                         exclude: str = "engaged") -> tuple[dict, list[dict]]:
    """The grid point whose `make(**point)` scores the highest `metric` (`cohort`) on `members`.

    `data` must be what the validation members may see (`training_data(..., "validation")`).
    Returns (best point, table): one row per point in grid order, the point's values plus `metric`.
    Ties go to the earlier point.
    """
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ValueError(f"the grid needs at least one value per parameter, got {dict(grid)}")
    _, _, cut = metric.partition("@")
    if not cut.isdigit():
        raise ValueError(f"metric must look like 'recall@10' or 'ndcg@10', got {metric!r}")
    names = list(grid)
    table = []
    for values in itertools.product(*(grid[name] for name in names)):
        point = dict(zip(names, values))
        report = evaluate_recommender(make(**point).fit(data), members, data, ks=(int(cut),), serving_k=None,
                                      exclude=exclude, progress=False)
        table.append({**point, metric: report["metrics"][cohort][metric]})
    best = max(range(len(table)), key=lambda i: (table[i][metric], -i))
    return {name: table[best][name] for name in names}, table
