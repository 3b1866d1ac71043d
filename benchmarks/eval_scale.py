"""How long `ff-jax eval` takes for its five cheap baselines at the scale of a real feed.

    .venv/bin/python benchmarks/eval_scale.py --label after            # times, writes results/eval_scale_after.json
    PYTHONPATH=/tmp/ff_before .venv/bin/python benchmarks/eval_scale.py --label before   # an older checkout
    .venv/bin/python benchmarks/eval_scale.py --table                  # before/after table -> results/eval_scale.md
    .venv/bin/python benchmarks/eval_scale.py --profile als            # cProfile of one baseline's stages

The data (seeded): 12,800 members, 14,900 items, ~420k interactions (about 1 in 8 an impression
without engagement). Item popularity is a power law (Zipf exponent 1), each member's activity
log-normal (at least 5 engagements, so every member has a test target), and each member leans
towards 2 of 40 topics, so collaborative filtering has something to find. A quarter of the items
appear during the logged period (`created_at`); nobody engages with an item before it exists, so
some test targets are items with no engagement before the test period ("fresh").
The frames go through ff_jax.data.tables.validate_tables and ff_jax.data.splits.temporal_split,
and the recommenders learn from `training_data(tables, splits, "test")`: the project's protocol.

Timed: what `evaluate_run` does for each name in CHEAP_BASELINES (ff_jax/retrieval/evaluate.py):
fit on the training data, rank every test member's whole corpus at the report's deepest cut
(2,000, the serving count) with the engaged history excluded, and the metrics (recall/NDCG@K,
hit rate, MRR, per cohort). Stages are timed apart (fit, rank, metrics). `evaluate_run` fits ALS
and BPR with fixed settings (chosen on MovieLens-100k's validation split); it selects nothing on
validation. `--grid` adds the cost of one validation-grid selection (select_on_validation of ALS
over 2 points), as experiments/baselines.py runs it, for reference.

Each run records a digest of every ranking and the metrics, so `--table` can say whether the
before and after code produced identical results.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ("popularity", "random", "itemknn", "als", "bpr")


def generate(seed: int = 0, n_users: int = 12_800, n_items: int = 14_900, n_interactions: int = 420_000,
             topics: int = 40, impression_share: float = 0.12):
    """Seeded FeedTables of the shape described in the module docstring."""
    from ff_jax.data.tables import validate_tables

    rng = np.random.default_rng(seed)
    start, end = 1_600_000_000, 1_600_000_000 + 180 * 86400
    # Items: Zipf popularity in a random order, a topic each, a quarter created during the period.
    weight = 1.0 / np.arange(1, n_items + 1) ** 1.0
    weight = weight[rng.permutation(n_items)]
    topic = rng.integers(0, topics, n_items)
    created = np.where(rng.random(n_items) < 0.25, rng.integers(start, end, n_items), start - 86400)
    # Members: log-normal activity scaled to the interaction count, at least 5 rows each.
    activity = rng.lognormal(0.0, 1.0, n_users)
    counts = np.maximum(5, np.round(activity / activity.sum() * n_interactions)).astype(np.int64)
    user = np.repeat(np.arange(n_users), counts)
    first = rng.integers(start, start + 120 * 86400, n_users)
    times = rng.integers(first[user], end)
    likes = rng.integers(0, topics, (n_users, 2))
    own = rng.random(user.size) < 0.6
    wanted_topic = np.where(own, likes[user, rng.integers(0, 2, user.size)], -1)
    # Draw each row's item among the items that exist at its time, by popularity (within its topic
    # for the rows that follow the member's taste): 30 time buckets, one cumulative table per group.
    item = np.empty(user.size, np.int64)
    edges = np.linspace(start, end, 31)
    bucket = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, 29)
    for b in range(30):
        alive = created <= edges[b]
        for group in range(-1, topics):
            rows = np.flatnonzero((bucket == b) & (wanted_topic == group))
            if not rows.size:
                continue
            pool = np.flatnonzero(alive & ((topic == group) if group >= 0 else True))
            cdf = np.cumsum(weight[pool])
            item[rows] = pool[np.searchsorted(cdf, rng.random(rows.size) * cdf[-1], side="right").clip(0, pool.size - 1)]
    times = np.maximum(times, created[item])  # an item created inside its bucket: engaged once it exists
    engaged = rng.random(user.size) >= impression_share
    order = np.argsort(times, kind="stable")
    item_ids = np.array([f"i{j}" for j in range(n_items)], dtype=object)
    user_ids = np.array([f"u{u}" for u in range(n_users)], dtype=object)
    interactions = pd.DataFrame({"user_id": user_ids[user[order]], "item_id": item_ids[item[order]],
                                 "timestamp": times[order].astype(np.int64), "engaged": engaged[order]})
    users = pd.DataFrame({"user_id": user_ids})
    items = pd.DataFrame({"item_id": item_ids, "text": [f"item {j} topic {t}" for j, t in enumerate(topic)],
                          "created_at": created.astype(np.int64)})
    return validate_tables(users, items, interactions, name="eval_scale")


def prepare(seed: int = 0):
    """(training data of the test split, test members with a target, validation data, validation members)."""
    from ff_jax.data.splits import temporal_split
    from ff_jax.retrieval.recommender import training_data

    tables = generate(seed)
    splits = temporal_split(tables, progress=False)
    test = [m for m in splits.test if m.targets]
    return tables, splits, training_data(tables, splits, "test"), test


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.int64).tobytes()).hexdigest()[:16]


def run_baseline(name: str, training, members) -> dict:
    """Times of one baseline's stages as `evaluate_recommender` runs them, its metrics and ranking digest."""
    from ff_jax.retrieval import evaluate
    from ff_jax.retrieval.evaluate import CHEAP_BASELINES, DEFAULT_KS, SERVING_K, cutoffs, rank

    # What evaluate_recommender computes from the ranking: since the fresh-item cohort (issue 27),
    # figures_of_ranking (metrics + freshness); before it, metrics_of_ranking.
    if hasattr(evaluate, "figures_of_ranking"):
        figures = lambda *a: evaluate.figures_of_ranking(*a)[0]  # noqa: E731
    else:
        figures = evaluate.metrics_of_ranking

    t0 = time.perf_counter()
    rec = CHEAP_BASELINES[name]().fit(training)
    t1 = time.perf_counter()
    chosen = cutoffs(DEFAULT_KS, SERVING_K, training.num_items)
    ranked = rank(rec, members, training, max(chosen), "engaged", progress=False)
    t2 = time.perf_counter()
    metrics = figures(ranked, members, training, chosen)
    t3 = time.perf_counter()
    return {"fit_s": t1 - t0, "rank_s": t2 - t1, "metrics_s": t3 - t2, "total_s": t3 - t0,
            "ranking_digest": digest(ranked), "metrics": metrics}


def run_grid(tables, splits) -> dict:
    """One validation-grid selection (ALS, 2 points) as experiments/baselines.py runs it."""
    from ff_jax.retrieval.baselines import ALS, select_on_validation
    from ff_jax.retrieval.recommender import training_data

    t0 = time.perf_counter()
    data = training_data(tables, splits, "validation")
    best, table = select_on_validation(lambda **p: ALS(factors=64, seed=0, **p), {"reg": (3.0, 10.0)}, data,
                                       splits.validation)
    return {"total_s": time.perf_counter() - t0, "best": best, "table": table}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="after", help="names the results file eval_scale_<label>.json")
    parser.add_argument("--only", nargs="*", choices=BASELINES, help="time just these baselines")
    parser.add_argument("--grid", action="store_true", help="also time a 2-point ALS validation grid")
    parser.add_argument("--profile", choices=BASELINES, help="cProfile one baseline's stages instead of timing")
    parser.add_argument("--table", action="store_true", help="write results/eval_scale.md from the saved runs")
    args = parser.parse_args(argv)
    if args.table:
        write_table()
        return 0
    import ff_jax

    t0 = time.perf_counter()
    tables, splits, training, members = prepare()
    setup_s = time.perf_counter() - t0
    print(f"ff_jax from {Path(ff_jax.__file__).parent}; data: {len(members):,} test members, "
          f"{training.num_items:,} items, {len(tables.interactions):,} interactions, "
          f"{training.engagements.nnz:,} training engagements (setup {setup_s:.1f} s)", flush=True)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_baseline, args.profile, training, members)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        return 0
    out = {"label": args.label, "code": str(Path(ff_jax.__file__).parent), "machine": describe("numpy", "scipy", "implicit"),
           "data": {"members": len(members), "items": training.num_items, "interactions": len(tables.interactions),
                    "training_engagements": int(training.engagements.nnz)}, "baselines": {}}
    for name in args.only or BASELINES:
        out["baselines"][name] = result = run_baseline(name, training, members)
        print(f"{name:<11} fit {result['fit_s']:7.2f} s  rank {result['rank_s']:7.2f} s  metrics "
              f"{result['metrics_s']:6.2f} s  total {result['total_s']:7.2f} s  recall@10 "
              f"{result['metrics']['all']['recall@10']:.4f}", flush=True)
    out["total_s"] = sum(r["total_s"] for r in out["baselines"].values())
    print(f"all baselines: {out['total_s']:.1f} s", flush=True)
    if args.grid:
        out["grid"] = run_grid(tables, splits)
        print(f"ALS validation grid (2 points): {out['grid']['total_s']:.1f} s", flush=True)
    out["machine"]["load_average_end"] = describe()["load_average"]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"eval_scale_{args.label}.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    path.write_text(json.dumps({"runs": runs + [out]}, indent=1, default=float))
    print(f"wrote {path}")
    return 0


def write_table() -> None:
    """results/eval_scale.md: seconds per stage before and after, each run listed, and the ratio."""
    before = json.loads((RESULTS / "eval_scale_before.json").read_text())["runs"]
    after = json.loads((RESULTS / "eval_scale_after.json").read_text())["runs"]
    best = lambda runs, name, stage: min(r["baselines"][name][stage] for r in runs if name in r["baselines"])  # noqa: E731
    names = [n for n in BASELINES if all(n in r["baselines"] for r in before + after)]
    same = all(r["baselines"][n]["ranking_digest"] == before[0]["baselines"][n]["ranking_digest"]
               and r["baselines"][n]["metrics"] == before[0]["baselines"][n]["metrics"]
               for r in before + after for n in names)
    machine = after[-1]["machine"]
    data = after[-1]["data"]
    lines = [
        "`ff-jax eval`'s five cheap baselines at feed scale (`benchmarks/eval_scale.py`): fit, rank every "
        f"test member's corpus to depth 2,000 with the engaged history excluded, metrics. Synthetic, seeded: "
        f"{data['members']:,} test members, {data['items']:,} items, {data['interactions']:,} interactions "
        f"({data['training_engagements']:,} training engagements).", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores (shared with other developers' light work), "
        f"{machine['memory_gb']} GB; numpy {machine['numpy']}, scipy {machine['scipy']}, implicit {machine['implicit']}. "
        f"Load average (1 min) at start / end of the runs: "
        + "; ".join(f"{r['label']} {r['machine']['load_average']:.1f} / {r['machine'].get('load_average_end', float('nan')):.1f}"
                    for r in before + after) + ".", "",
        f"Seconds, the faster of {len(before)} runs before and {len(after)} after; each run's total is listed below. "
        f"Rankings and metrics identical before and after: {'yes' if same else 'NO'} "
        "(sha256 of every ranking, and every metric).", "",
        "| baseline | stage | before (s) | after (s) | before / after |", "|---|---|---|---|---|"]
    for name in names:
        for stage in ("fit_s", "rank_s", "metrics_s", "total_s"):
            b, a = best(before, name, stage), best(after, name, stage)
            lines.append(f"| {name} | {stage[:-2]} | {b:.2f} | {a:.2f} | {b / a:.1f}x |")
    b_all = min(sum(r["baselines"][n]["total_s"] for n in names) for r in before)
    a_all = min(sum(r["baselines"][n]["total_s"] for n in names) for r in after)
    lines += [f"| **all five** | total | **{b_all:.1f}** | **{a_all:.1f}** | **{b_all / a_all:.1f}x** |", "",
              "Each run's total (s): before " + ", ".join(f"{sum(r['baselines'][n]['total_s'] for n in names):.1f}"
                                                        for r in before)
              + "; after " + ", ".join(f"{sum(r['baselines'][n]['total_s'] for n in names):.1f}" for r in after) + "."]
    grids = [(r["label"], r["grid"]["total_s"]) for r in before + after if "grid" in r]
    if grids:
        lines += ["", "ALS validation grid, 2 points (not part of `ff-jax eval`): "
                  + ", ".join(f"{label} {s:.1f} s" for label, s in grids) + "."]
    (RESULTS / "eval_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
