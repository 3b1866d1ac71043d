"""Every baseline on the same temporal split and metric code, written as JSON + a Markdown table.

    .venv/bin/python experiments/baselines.py                          # MovieLens-100k, all methods
    .venv/bin/python experiments/baselines.py --dataset feed_world --size tiny --skip backbone
    .venv/bin/python experiments/baselines.py --only backbone          # add / refresh one method

Protocol (../shared/REFERENCE.md): positives = engagements (MovieLens: rating >= 4); per member the
last 20% of positives by time are the test targets, all earlier interactions the history; every
item except the member's engaged history is ranked; "new" = the quarter of members with the fewest
positives before their targets. Baselines learn from the engagements before the test period.
Hyper-parameters that the reference does not fix (ALS confidence alpha) are chosen on the
validation split, never on test. Results merge into experiments/results/<dataset>_baselines.json
(a rerun with --only replaces just those methods).
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
METHODS = ("random", "popularity", "bm25", "minilm", "backbone", "itemknn", "bpr", "als")
LABELS = {"random": "random", "popularity": "popularity", "bm25": "BM25 (history titles+genres → item text)",
          "minilm": "all-MiniLM-L6-v2 zero-shot", "backbone": "SmolLM2-135M backbone zero-shot (mean pooling)",
          "itemknn": "item-kNN (cosine)", "bpr": "BPR (64 factors)", "als": "ALS (64 factors, reg 10)"}
COLUMNS = (("R@10", "all", "recall@10"), ("R@50", "all", "recall@50"), ("R@100", "all", "recall@100"),
           ("NDCG@10", "all", "ndcg@10"), ("new R@10", "new", "recall@10"),
           ("established R@10", "established", "recall@10"))


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
    from ff_jax.train.data_source import FeedData

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
    if method == "bpr":
        return baselines.BPR(factors=64, reg=3e-3, epochs=60, progress=True)
    if method == "als":
        return baselines.ALS(factors=64, reg=10.0, alpha=choose_als_alpha(tables, splits), progress=True)
    if method == "backbone":
        feed = backbone_feed(args.dataset, args.size, args.data_dir, args.member_budget)
        return baselines.BackboneZeroShot(feed, Path(args.workdir) / f"{args.dataset}_{args.size}", split="test")
    raise ValueError(method)


def choose_als_alpha(tables, splits, alphas=(0.0, 1.0, 10.0)) -> float:
    """The confidence weight with the best validation recall@10 (the test split is not looked at)."""
    data = training_data(tables, splits, "validation")
    scores = {}
    for alpha in alphas:
        rec = baselines.ALS(factors=64, reg=10.0, alpha=alpha).fit(data)
        report = evaluate_recommender(rec, splits.validation, data, ks=(10,), serving_k=None, progress=False)
        scores[alpha] = report["metrics"]["all"]["recall@10"]
    print(f"ALS alpha on validation (recall@10): {scores}")
    return max(scores, key=scores.get)


def markdown(results: dict, dataset: str) -> str:
    labels = dict(LABELS)
    if dataset != "movielens":  # no title / genres columns: BM25 queries with the items' text
        labels["bm25"] = "BM25 (history text → item text)"
    head = "| method | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for method in METHODS:
        if method in results:
            m = results[method]["metrics"]
            cells = [f"{m[c][k]:.3f}".lstrip("0") if c in m else "-" for _, c, k in COLUMNS]
            lines.append(f"| {labels[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        rec = make(method, args, tables, splits).fit(data)
        report = evaluate_recommender(rec, splits.test, data, progress=False)
        report["seconds"] = round(time.perf_counter() - start, 1)
        if method == "als":
            report["alpha"] = rec.alpha
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
    out.with_suffix(".md").write_text(f"# Baselines: {tag}\n\n{len(splits.test)} test members.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
