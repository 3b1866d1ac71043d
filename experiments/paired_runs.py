"""Runs compared member by member on one split, for comparisons trained once (one seed), where the
seed spread that the ablations notebook judges by does not exist.

    .venv/bin/python experiments/paired_runs.py workdirs/sweeps/numbers_movielens/quantized_seed0 \
        workdirs/sweeps/numbers_movielens/absent_seed0 workdirs/sweeps/numbers_movielens/raw_seed0 \
        --out experiments/results/numbers_movielens/paired_seed0.json

The first workdir is the base. Each run's test members are ranked from its embeddings exactly as
`ff-jax eval` ranks them (full width, exact cosine, engaged history excluded). For each other run,
the change of recall@10, recall@100 and NDCG@10 (other - base) is given as its mean over members
with a 95% paired bootstrap interval (ff_jax.retrieval.paired). An interval that excludes 0 means
the difference is more than the noise of which members are in the split. It does not cover seed
noise: a second training of the same variant moves recall too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ff_jax.retrieval.evaluate import embedded_split, rank
from ff_jax.retrieval.paired import compare_rankings
from ff_jax.train.run import Run

METRICS = ("recall@10", "recall@100", "ndcg@10")


def ranked_members(workdir: Path, split: str, k: int):
    """(TrainingData, evaluated members, their rankings) of a run, from its config.gin and embeddings."""
    run = Run.open(workdir)
    loaded = embedded_split(run.spec.feed, run.layout.embeddings(), split)
    ranked = rank(loaded.recommender(), loaded.evaluated, loaded.training, k, "engaged", progress=False)
    return loaded.training, loaded.evaluated, ranked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", type=Path, help="the base run's workdir, then the others'")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args()
    if len(args.workdirs) < 2:
        parser.error("give the base run's workdir and at least one other")
    k = max(int(m.split("@")[1]) for m in METRICS)
    base_data, members, base = ranked_members(args.workdirs[0], args.split, k)
    report = {"base": str(args.workdirs[0]), "split": args.split, "members": len(members), "compared": {}}
    for workdir in args.workdirs[1:]:
        data, others, ranked = ranked_members(workdir, args.split, k)
        if [m.user_id for m in others] != [m.user_id for m in members] or data.corpus_ids != base_data.corpus_ids:
            raise SystemExit(f"{workdir}: its {args.split} members or corpus differ from {args.workdirs[0]}'s: "
                             "compare runs of the same dataset and split")
        report["compared"][str(workdir)] = changes = compare_rankings(base, ranked, members, base_data, METRICS)
        print(f"{workdir.name} - {args.workdirs[0].name} ({len(members)} {args.split} members):")
        for metric, c in changes.items():
            low, high = c["ci95"]
            print(f"  {metric:11s} {c['mean']:+.4f}  (95% paired bootstrap: {low:+.4f} to {high:+.4f})")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
