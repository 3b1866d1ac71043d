"""Every baseline on the same temporal split and metric code, written as JSON + a Markdown table.

    .venv/bin/python experiments/baselines.py                          # MovieLens-100k, all methods
    .venv/bin/python experiments/baselines.py --dataset feed_world --size tiny --skip backbone
    .venv/bin/python experiments/baselines.py --only backbone          # add / refresh one method

Protocol (docs/reference.md): positives = engagements (MovieLens: rating >= 4); per member the
last 20% of positives by time are the test targets, all earlier interactions the history; every
item except the member's engaged history is ranked; "new" = the quarter of members with the fewest
positives before their targets. Baselines learn from the engagements before the test period.
ALS and BPR come from the `implicit` library, SASRec from ff_jax/retrieval/baselines/sasrec.py;
their hyper-parameters (ALS: reg, alpha, sweeps; BPR: learning rate, reg, epochs; 64 factors each;
SASRec: input, learning rate, epochs) are chosen on the validation split from the grids below,
never on test, and the validation table is saved with the result. Results merge
into experiments/results/<dataset>_baselines.json (a rerun with --only replaces just those methods).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


from ff_jax.retrieval import baselines
from ff_jax.retrieval.evaluate import evaluate_recommender
from ff_jax.retrieval.recommender import training_data

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("random", "popularity", "bm25", "minilm", "backbone", "itemknn", "bpr", "als", "sasrec")
LABELS = {"random": "random", "popularity": "popularity", "bm25": "BM25 (history titles+genres → item text)",
          "minilm": "all-MiniLM-L6-v2 zero-shot", "backbone": "SmolLM2-135M backbone zero-shot (mean pooling)",
          "itemknn": "item-kNN (cosine)", "bpr": "BPR (implicit, 64 factors)", "als": "ALS (implicit, 64 factors)",
          "sasrec": "SASRec (ours, JAX: 2 blocks, d=64, full softmax)"}
# Validation grids (seeded, single-threaded fits: about 1 s per ALS point, 2-4 s per BPR point on
# MovieLens-100k, 2 cores). implicit's ALS alpha is the confidence of an engagement (1 = unweighted).
GRIDS = {"als": {"reg": (3.0, 10.0, 30.0), "alpha": (1.0, 2.0, 5.0, 10.0), "iterations": (15, 50)},
         "bpr": {"learning_rate": (0.01, 0.02), "reg": (0.001, 0.01), "iterations": (25, 50, 100)},
         # SASRec (ff_jax/retrieval/baselines/sasrec.py): 1.5-4.5 s an epoch on MovieLens-100k (2 cores
         # shared with other jobs; "all" reads 1.7x the events), 21 min for this grid: kept small.
         "sasrec": {"input": ("positives", "all"), "learning_rate": (0.001, 0.003), "epochs": (20, 50)}}
COLUMNS = (("R@10", "all", "recall@10"), ("R@50", "all", "recall@50"), ("R@100", "all", "recall@100"),
           ("NDCG@10", "all", "ndcg@10"), ("new R@10", "new", "recall@10"),
           ("established R@10", "established", "recall@10"))
# Targets whose item had no engagement in the training data, and the rest (the report's "freshness").
FRESH_COLUMNS = (("fresh R@10", "fresh", "recall@10"), ("seen R@10", "seen", "recall@10"))


def load(dataset: str, size: str):
    from ff_jax.data import temporal_split

    if dataset == "movielens":
        from ff_jax.data import load_movielens_100k

        tables = load_movielens_100k()
    else:
        from ff_jax.data import feed_world

        tables = feed_world.generate(feed_world.feed_world_config(size, seed=0)).tables
    return tables, temporal_split(tables, progress=False)


def backbone_feed(dataset: str, size: str, data_dir: str, member_budget: int):
    """The dataset's prompts as training uses them, batched for the SmolLM2 tokenizer."""
    from ff_jax.data.pipeline import BatchConfig
    from ff_jax.data.feed_data import FeedData

    # Items are short (MovieLens ~30 tokens): pack 16 per row; members take one row each.
    batch = BatchConfig(examples_per_shard=16, length=member_budget, member_budget=member_budget,
                        item_budget=min(member_budget, 128), mode="packed", max_segments=16, item_rows=4,
                        member_rows=16)
    name, config = ("movielens_feed", "100k") if dataset == "movielens" else ("feed_world", size)
    return FeedData(data_dir=data_dir, dataset=name, config=config, batch=batch, tokenizer="checkpoint")


def make(method: str, args, tables, splits):
    if method == "random":
        return baselines.RandomScores(seed=0)
    if method == "popularity":
        return baselines.Popularity()
    if method == "bm25":
        return baselines.BM25()
    if method == "minilm":
        return baselines.MiniLM(progress=True)
    if method == "itemknn":
        return baselines.ItemKNN()
    if method in GRIDS:
        return FACTORIES[method](**choose_on_validation(method, tables, splits)[0])
    if method == "backbone":
        feed = backbone_feed(args.dataset, args.size, args.data_dir, args.member_budget)
        return baselines.BackboneZeroShot(feed, Path(args.workdir) / f"{args.dataset}_{args.size}", split="test")
    raise ValueError(method)


FACTORIES = {"als": lambda **p: baselines.ALS(factors=64, seed=0, **p),
             "bpr": lambda **p: baselines.BPR(factors=64, seed=0, **p),
             "sasrec": lambda **p: baselines.SASRec(dim=64, blocks=2, seed=0, **p)}
_CHOSEN: dict = {}


def choose_on_validation(method: str, tables, splits) -> tuple[dict, list[dict]]:
    """GRIDS[method]'s point with the best validation recall@10, and the validation table (cached)."""
    if method not in _CHOSEN:
        data = training_data(tables, splits, "validation")
        best, table = baselines.select_on_validation(FACTORIES[method], GRIDS[method], data, splits.validation)
        print(f"{method} on validation (recall@10): " + "; ".join(
            f"{', '.join(f'{k} {v}' for k, v in row.items() if k != 'recall@10')}: {row['recall@10']:.4f}"
            for row in table) + f"\n  chosen: {best}", flush=True)
        _CHOSEN[method] = best, table
    return _CHOSEN[method]


def markdown(results: dict, dataset: str) -> str:
    labels = dict(LABELS)
    if dataset != "movielens":  # no title / genres columns: BM25 queries with the items' text
        labels["bm25"] = "BM25 (history text → item text)"
    columns = COLUMNS + FRESH_COLUMNS
    head = "| method | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for method in METHODS:
        if method in results:
            m = {**results[method]["metrics"], **results[method].get("freshness", {})}
            cells = [f"{m[c][k]:.3f}".lstrip("0") if k in m.get(c, {}) else "-" for _, c, k in columns]
            lines.append(f"| {labels[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fresh_share(results: dict) -> str:
    """"n of m test targets (p%) are fresh", from any report that has the freshness split."""
    for report in results.values():
        if report.get("freshness"):
            fresh, seen = (int(report["freshness"][kind]["targets"]) for kind in ("fresh", "seen"))
            return f"{fresh:,} of {fresh + seen:,} test targets ({fresh / (fresh + seen):.1%}) are fresh items."
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("movielens", "feed_world"), default="movielens")
    parser.add_argument("--size", default="tiny", help="feed_world size (tiny, small, ...)")
    parser.add_argument("--only", nargs="*", choices=METHODS, help="run just these methods")
    parser.add_argument("--skip", nargs="*", choices=METHODS, default=[])
    parser.add_argument("--data_dir", default="/tmp/ff_jax_baselines/data", help="TFDS data for the backbone")
    parser.add_argument("--workdir", default="/tmp/ff_jax_baselines/backbone", help="backbone embeddings (resumable)")
    parser.add_argument("--member_budget", type=int, default=256, help="backbone member prompt tokens")
    args = parser.parse_args(argv)

    tables, splits = load(args.dataset, args.size)
    data = training_data(tables, splits, "test")
    print(splits)
    tag = "movielens" if args.dataset == "movielens" else f"feed_world_{args.size}"
    out = RESULTS / f"{tag}_baselines.json"
    results = json.loads(out.read_text())["methods"] if out.exists() else {}
    for method in args.only or METHODS:
        if method in args.skip:
            continue
        start = time.perf_counter()
        if method in GRIDS:  # timed apart: "seconds" is the test fit + evaluation alone
            chosen, table = choose_on_validation(method, tables, splits)
            selection_seconds = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
        rec = make(method, args, tables, splits).fit(data)
        report = evaluate_recommender(rec, splits.test, data, progress=False)
        report["seconds"] = round(time.perf_counter() - start, 1)
        if method in GRIDS:
            report.update(params=chosen, validation=table, selection_seconds=selection_seconds)
        if method == "backbone":
            report["member_budget"] = args.member_budget
        results[method] = report
        print(f"{LABELS[method]}: R@10 {report['metrics']['all']['recall@10']:.3f} ({report['seconds']} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = f"{os.cpu_count()}-core CPU ({platform.machine()}), Python {platform.python_version()}"
    payload = {"dataset": tag, "split": str(splits), "members": len(splits.test), "machine": machine,
               "protocol": "exclude engaged history; recall/NDCG averaged over members", "methods": results}
    out.write_text(json.dumps(payload, indent=1, default=float))
    table = markdown(results, args.dataset)
    out.with_suffix(".md").write_text(f"# Baselines: {tag}\n\n{len(splits.test)} test members. "
                                      f"{fresh_share(results)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
