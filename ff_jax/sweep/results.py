"""What one finished run leaves in the sweep's results folder (<results>/runs/<run>/): its record,
eval results and training log, and a few test members' top items with their text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ff_jax.files import write_atomic
from ff_jax.sweep.runs import RECORD, Run
from ff_jax.train.layout import METRICS_JSONL, Layout


def top_items(workdir: Path, members: int = 3, k: int = 10) -> dict:
    """The first `members` evaluated test members with a target: their engaged history and their
    top-k items by the run's embeddings (text, cosine, whether held out as a target)."""
    from ff_jax.retrieval.embedding_store import read_tower
    from ff_jax.retrieval.eval_data import feed_eval_data
    from ff_jax.retrieval.recommender import corpus_order
    from ff_jax.train.run import Run as TrainingRun

    run = TrainingRun.open(workdir)
    training, split = feed_eval_data(run.spec.feed, "test")
    item_ids, items = read_tower(run.layout.items())
    items = corpus_order(item_ids, items, training.corpus_ids, str(run.layout.items()))
    member_ids, vectors = read_tower(run.layout.members("test"))
    rows = {m: i for i, m in enumerate(member_ids.tolist())}
    text = dict(zip(training.items["item_id"], training.items["text"]))
    out = []
    for member in [m for m in split if m.targets and m.user_id in rows][:members]:
        scores = items @ vectors[rows[member.user_id]]
        scores[training.positions(member.engaged_history)] = -np.inf  # as eval ranks: history excluded
        best = np.argsort(-scores, kind="stable")[:k]
        targets = set(member.targets)
        out.append({"user_id": member.user_id, "cohort": member.cohort,
                    "history": [{"item_id": i, "text": text[i]} for i in member.engaged_history[::-1][:k]],
                    "targets": [{"item_id": i, "text": text[i]} for i in member.targets],
                    "top": [{"item_id": training.corpus_ids[p], "text": text[training.corpus_ids[p]],
                             "score": float(scores[p]), "target": training.corpus_ids[p] in targets} for p in best]})
    return {"members": out, "k": k}


def collect(run: Run, results: Path) -> Path:
    """Copies what the summary and notebooks read into <results>/runs/<run>/."""
    out = results / "runs" / run.name
    out.mkdir(parents=True, exist_ok=True)
    for source, name in ((run.workdir / RECORD, RECORD), (run.eval_file, "metrics_test.json"),
                         (Layout(run.workdir).metrics, METRICS_JSONL)):
        write_atomic(out / name, source.read_bytes())
    write_atomic(out / "examples.json", json.dumps(top_items(run.workdir), indent=1))
    return out
