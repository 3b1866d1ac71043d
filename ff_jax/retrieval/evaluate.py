"""Offline evaluation: one ranking + metrics path for trained dual encoders and baselines alike.

    report = evaluate_recommender(Popularity().fit(data), splits.test, data)
    report = evaluate_embeddings(member_ids, members, items, splits.test, data, dims=(64, 128))

Protocol (docs/reference.md, "Evaluation protocol"): every corpus item is ranked for every
evaluated member except the items removed by `exclude` ("engaged": the member's engaged history,
the default; "history": every item in the history; "none"); the held-out targets are the relevant
items. Ranking and metrics give what ff_jax.data.ranking_metrics (`top_k`, `ranking_metrics`) gives, as
training's validation does: recall@K and NDCG@K for K in `ks` and the serving candidate count
(2,000 in the paper, capped at the corpus size), hit rate and MRR, averaged over members, overall
and per cohort ("new" / "established"), and recall@K / NDCG@K on the fresh targets (items with no
engagement in the training data the recommenders fit on) and on the rest ("freshness").
Embeddings add: one report per Matryoshka prefix size, ScaNN's recall against exact search (and
the metrics of the ScaNN-served lists), and the paper's popularity-similarity correlation.
`evaluate_run` is the gin entry of `ff-jax eval` (ff_jax/cli.py).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gin
import numpy as np
from absl import logging
import pandas as pd
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval import baselines, metrics
from ff_jax.retrieval.baselines.simple import Popularity, RandomScores
from ff_jax.retrieval.embedding_store import read_tower, tower_settings
from ff_jax.retrieval.eval_data import feed_eval_data
from ff_jax.retrieval.exact import ExactIndex
from ff_jax.retrieval.metrics import ranking_figures, top_k  # ranking_metrics' results, batched for ~10^4 members
from ff_jax.retrieval.scann_index import ScannIndex
from ff_jax.train.checkpointing import newest_sealed_step
from ff_jax.train.layout import EMBEDDINGS, ITEMS, members_folder
from ff_jax.train.run import Run
from ff_jax.retrieval.recommender import (EmbeddingRecommender, Recommender, TrainingData, corpus_order,
                                          member_events, unit_rows)

DEFAULT_KS = (10, 50, 100, 1000)
RANK_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
SERVING_K = 2000
EXCLUDE_MODES = ("engaged", "history", "none")


def excluded_items(members: Sequence[EvalMember], mode: str) -> list[list[str]]:
    """The item ids each member's ranking must leave out under `mode` (see EXCLUDE_MODES)."""
    if mode == "engaged":
        return [m.engaged_history for m in members]
    if mode == "history":
        return [list(m.history) for m in members]
    if mode == "none":
        return [[] for _ in members]
    raise ValueError(f"exclude must be one of {EXCLUDE_MODES}, got {mode!r}")


def rank(recommender: Recommender, members: Sequence[EvalMember], data: TrainingData, k: int,
         exclude: str = "engaged", batch_size: int | None = None, progress: bool = True) -> np.ndarray:
    """Corpus positions [members, min(k, corpus)] ranked by `recommender`, -1 where nothing is left.

    Members are scored `batch_size` at a time (default: up to 256, fewer for big corpora so a
    batch's score matrix stays near 128 MB), in order, in this thread; each batch's top-k runs on
    one of RANK_THREADS threads (numpy's partition and sort release the GIL) while the next batch
    is scored. The result does not depend on the threads: top-k keys are unique per row."""
    batch_size = batch_size or int(np.clip((1 << 25) // max(data.num_items, 1), 1, 256))
    excluded = [data.positions(e) for e in excluded_items(members, exclude)]
    out, pending = [], collections.deque()
    with ThreadPoolExecutor(RANK_THREADS) as pool:
        for start in tqdm(range(0, len(members), batch_size), desc=f"ranking ({getattr(recommender, 'name', '')})",
                          unit="batch", disable=not progress, mininterval=1.0):
            batch = members[start : start + batch_size]
            scores = np.asarray(recommender.score(batch))
            if scores.shape != (len(batch), data.num_items):
                raise ValueError(f"{type(recommender).__name__}.score returned shape {scores.shape}; expected "
                                 f"({len(batch)}, {data.num_items}) = (members, corpus items)")
            pending.append(pool.submit(top_k, scores, excluded[start : start + batch_size], k))
            if len(pending) > RANK_THREADS:  # at most RANK_THREADS + 1 batches of scores held at once
                out.append(pending.popleft().result())
        out.extend(job.result() for job in pending)
    return np.concatenate(out) if out else np.zeros((0, min(k, data.num_items)), np.int64)


def cutoffs(ks: Sequence[int], serving_k: int | None, corpus: int) -> list[int]:
    """The K values reported: `ks` below the corpus size, plus the serving count capped at it."""
    chosen = sorted({k for k in ks if k <= corpus} | ({min(serving_k, corpus)} if serving_k else set()))
    if not chosen or chosen[0] < 1:
        raise ValueError(f"no valid K among ks={list(ks)}, serving_k={serving_k} for a corpus of {corpus}")
    return chosen


def metrics_of_ranking(ranked: np.ndarray, members: Sequence[EvalMember], data: TrainingData,
                       ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """ranking_metrics over members with targets, keyed "all" / cohort; positions as ids."""
    return figures_of_ranking(ranked, members, data, ks, by_freshness=False)[0]


def fresh_items(data: TrainingData) -> np.ndarray:
    """bool [corpus items]: the items with no engagement in `data`, the interaction matrix the
    recommenders are fit on (for the test split: the training and validation periods). A target
    is "fresh" when its item is one of them: ID-based baselines know nothing about it."""
    return data.popularity() == 0


def figures_of_ranking(ranked: np.ndarray, members: Sequence[EvalMember], data: TrainingData, ks: Sequence[int],
                       by_freshness: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(metrics_of_ranking, freshness): freshness = {"fresh", "seen"} -> "targets" (how many
    distinct targets of that kind), "users" (members with one), recall@K and NDCG@K with only that
    kind of target relevant, averaged over those members (see metrics.ranking_figures); {} when
    `by_freshness` is False. Fresh: see `fresh_items`."""
    keep = [i for i, m in enumerate(members) if m.targets]
    if not keep:
        raise ValueError("no evaluated member has a target")
    targets = [data.positions(members[i].targets) for i in keep]
    return ranking_figures(ranked[keep], targets, data.num_items, ks, [members[i].cohort for i in keep],
                           fresh_items(data) if by_freshness else None)


def evaluate_recommender(recommender: Recommender, members: Sequence[EvalMember], data: TrainingData,
                         ks: Sequence[int] = DEFAULT_KS, serving_k: int | None = SERVING_K,
                         exclude: str = "engaged", progress: bool = True) -> dict:
    """The metrics report of a fitted recommender on `members` (see the module docstring)."""
    chosen = cutoffs(ks, serving_k, data.num_items)
    ranked = rank(recommender, members, data, max(chosen), exclude, progress=progress)
    figures, freshness = figures_of_ranking(ranked, members, data, chosen)
    return {"name": getattr(recommender, "name", type(recommender).__name__), "members": len(members),
            "corpus": data.num_items, "ks": chosen, "exclude": exclude, "metrics": figures, "freshness": freshness}


def popularity_similarity(member_vectors: np.ndarray, item_vectors: np.ndarray, popularity: np.ndarray,
                          max_members: int = 256, max_items: int = 20_000, seed: int = 0) -> dict:
    """The paper's check: correlation of item popularity with member-item cosine over (member, item)
    pairs, on a seeded sample of members x items. Spearman, and Pearson of log(1 + popularity)."""
    # Sample first, normalise the sample: a corpus of 100M vectors is never copied whole.
    member_vectors, item_vectors = np.asarray(member_vectors), np.asarray(item_vectors)
    popularity = np.asarray(popularity, np.float64)
    if popularity.shape != (len(item_vectors),):
        raise ValueError(f"popularity has shape {popularity.shape}; expected one count per item ({len(item_vectors)})")
    rng = np.random.default_rng(seed)
    m = rng.choice(len(member_vectors), min(max_members, len(member_vectors)), replace=False)
    i = rng.choice(len(item_vectors), min(max_items, len(item_vectors)), replace=False)
    members = unit_rows(member_vectors[m], "member vectors", m)
    items = unit_rows(item_vectors[i], "item vectors", i)
    cosine = (members @ items.T).ravel()
    pop = np.broadcast_to(popularity[i], (len(m), len(i))).ravel()
    return {"spearman": metrics.correlation(pop, cosine, "spearman"),
            "pearson_log": metrics.correlation(np.log1p(pop), cosine, "pearson"),
            "pairs": int(cosine.size)}


def ann_report(member_vectors: np.ndarray, item_vectors: np.ndarray, members: Sequence[EvalMember],
               data: TrainingData, ks: Sequence[int], exclude: str = "engaged", scann_config=None) -> dict:
    """ScaNN against exact search over the same vectors: recall of the exact top-k for each k, and
    the retrieval metrics of the ScaNN-served lists."""
    corpus = np.asarray(data.corpus_ids)
    k = max(ks)
    excluded = excluded_items(members, exclude)
    exact = ExactIndex().build(item_vectors, corpus)
    ann = ScannIndex(scann_config).build(item_vectors, corpus)
    _, exact_ids = exact.search(member_vectors, k, exclude=excluded)
    _, ann_ids = ann.search(member_vectors, k, exclude=excluded)
    recall = {f"ann_recall@{c}": metrics.ann_recall(ann_ids[:, :c], exact_ids[:, :c]) for c in ks}
    ranked = pd.Index(data.corpus_ids).get_indexer(ann_ids.ravel()).reshape(ann_ids.shape)  # pads -> -1
    return {**recall, "scann_leaves": ann.num_leaves, "served": metrics_of_ranking(ranked, members, data, ks)}


def evaluate_embeddings(member_ids: Sequence[str], member_vectors: np.ndarray, item_vectors: np.ndarray,
                        members: Sequence[EvalMember], data: TrainingData, dims: Sequence[int] | None = None,
                        ks: Sequence[int] = DEFAULT_KS, serving_k: int | None = SERVING_K,
                        exclude: str = "engaged", ann: bool = True, scann_config=None,
                        progress: bool = True, name: str = "dual encoder") -> dict:
    """Reports of an embedding model: per Matryoshka prefix size in `dims` (default: the full width),
    ANN vs exact at the full width, and the popularity-similarity correlation."""
    width = int(np.asarray(item_vectors).shape[1])
    dims = sorted(set(dims or [width]))
    report: dict = {"name": name, "width": width, "by_dim": {}}
    recs = {}
    for dim in dims:
        recs[dim] = EmbeddingRecommender(member_ids, member_vectors, item_vectors, dim=dim, name=f"{name}/{dim}").fit(data)
        report["by_dim"][str(dim)] = evaluate_recommender(recs[dim], members, data, ks, serving_k, exclude, progress)
    full = recs.get(width) or EmbeddingRecommender(member_ids, member_vectors, item_vectors).fit(data)
    evaluated = full.members[full.member_rows(members)]
    report["popularity_similarity"] = popularity_similarity(evaluated, full.items, data.popularity())
    if ann:
        chosen = cutoffs(ks, serving_k, data.num_items)
        report["ann"] = ann_report(evaluated, full.items, members, data, chosen, exclude, scann_config)
    return report


# ----------------------------------------------------------------------------- printing

TABLE_COLUMNS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "mrr")
# (header, kind, figure) from a report's "freshness", shown on its "all" row: targets whose item had
# no engagement in the training data ("fresh") and the rest ("seen"), n = distinct targets.
FRESHNESS_COLUMNS = (("fresh n", "fresh", "targets"), ("fresh R@10", "fresh", "recall@10"),
                     ("seen n", "seen", "targets"), ("seen R@10", "seen", "recall@10"))


def _freshness_cell(report: dict, kind: str, figure: str) -> str:
    value = report.get("freshness", {}).get(kind, {}).get(figure)
    if value is None or value != value:  # absent, or NaN (no target of that kind)
        return "-"
    return str(int(value)) if figure == "targets" else f"{value:.3f}"


def table_rows(reports: dict[str, dict], columns: Sequence[str] = TABLE_COLUMNS) -> list[list[str]]:
    """[method, cohort, users, *columns, *freshness columns] rows of {label: evaluate_recommender
    report}; the FRESHNESS_COLUMNS come only when some report has "freshness", filled on "all" rows."""
    fresh = any(report.get("freshness") for report in reports.values())
    rows = []
    for label, report in reports.items():
        for cohort, values in report["metrics"].items():
            rows.append([label, cohort, str(int(values["users"]))]
                        + [f"{values[c]:.3f}" if c in values else "-" for c in columns]
                        + ([_freshness_cell(report, kind, figure) if cohort == "all" else "-"
                            for _, kind, figure in FRESHNESS_COLUMNS] if fresh else []))
    return rows


def print_table(reports: dict[str, dict], columns: Sequence[str] = TABLE_COLUMNS, title: str = "") -> None:
    """The reports as a table: rich on a terminal, plain aligned text in logs (rich would cut
    cells to fit its 80-column default there)."""
    fresh = any(report.get("freshness") for report in reports.values())
    header = ["method", "cohort", "users", *columns, *([h for h, _, _ in FRESHNESS_COLUMNS] if fresh else [])]
    rows = table_rows(reports, columns)
    console = Console()
    if not console.is_terminal:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        if title:
            print(title)
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        return
    table = Table(title=title or None)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ----------------------------------------------------------------------------- `ff-jax eval`


# Fitted in seconds, so `ff-jax eval` can show them beside the model on the same members.
# Baselines `ff-jax eval` ranks beside the model: they need only the training interactions. ALS
# and BPR use the settings chosen on MovieLens-100k's validation split (docs/retrieval_eval.md);
# `baselines` imports each module on first use, so `implicit` loads only when ALS or BPR is asked for.
# SASRec (about a minute on MovieLens-100k) trains on the members' histories in time order.
CHEAP_BASELINES = {"random": RandomScores, "popularity": Popularity,
                   "itemknn": lambda: baselines.ItemKNN(), "als": lambda: baselines.ALS(),
                   "bpr": lambda: baselines.BPR(), "sasrec": lambda: baselines.SASRec()}


@dataclasses.dataclass
class EmbeddedSplit:
    """A split of the run's data with the towers `ff-jax embed` wrote for it."""

    training: TrainingData
    members: list[EvalMember]        # every member of the split
    member_ids: np.ndarray
    member_vectors: np.ndarray
    items: np.ndarray                # item vectors in corpus order
    evaluated: list[EvalMember]      # the members with an embedding and a target

    def recommender(self) -> EmbeddingRecommender:
        """Cosine retrieval with these towers, as `ff-jax eval` ranks at full width."""
        return EmbeddingRecommender(self.member_ids.tolist(), self.member_vectors, self.items).fit(self.training)


def embedded_split(data, root: Path, split: str) -> EmbeddedSplit:
    """`split` of `data` (a FeedData) with the towers under `root` (an embeddings folder)."""
    training, members = feed_eval_data(data, split)
    item_ids, items = read_tower(root / ITEMS)
    items = corpus_order(item_ids, items, training.corpus_ids, str(root / ITEMS))
    member_ids, member_vectors = read_tower(root / members_folder(split))
    embedded = set(member_ids.tolist())
    evaluated = [m for m in members if m.user_id in embedded and m.targets]
    if not evaluated:
        raise ValueError(f"{root / members_folder(split)}: none of the {len(members)} {split} members has an embedding")
    return EmbeddedSplit(training, members, member_ids, member_vectors, items, evaluated)


def warn_if_stale(workdir: Path, member_dir: Path, model: dict) -> None:
    """Says, in one line, when the embeddings come from an older checkpoint than the run's newest:
    the figures are then those of the older model (a chosen EmbedConfig.checkpoint_step, or a run
    trained on after `ff-jax embed`)."""
    if model.get("source") != "checkpoint":
        return
    newest = newest_sealed_step(workdir / model["checkpoints"])
    if newest is not None and newest > model["step"]:
        logging.warning("%s: embedded with checkpoint %d, but the newest checkpoint is %d: these figures are "
                        "checkpoint %d's. To evaluate %d: ff-jax embed --workdir=%s --gin.EmbedConfig.overwrite=True",
                        member_dir, model["step"], newest, model["step"], newest, workdir)


@gin.configurable(denylist=["run"])
def evaluate_run(run: Run, embeddings: str = EMBEDDINGS, split: str = "test", ks: Sequence[int] = DEFAULT_KS,
                 serving_k: int | None = SERVING_K, dims: Sequence[int] | None = None, ann: bool = True,
                 exclude: str = "engaged", output: str = "eval", baselines: Sequence[str] = (),
                 progress: bool = True) -> dict:
    """Evaluates the embeddings `ff-jax embed` wrote under `<workdir>/<embeddings>/` on `split` of the
    run's dataset; writes `<workdir>/<output>/metrics_<split>.json` and prints a table.
    dims: Matryoshka widths to report (default: those the embed job stored). baselines: names from
    CHEAP_BASELINES ranked for the same members and shown in the same table."""
    unknown = sorted(set(baselines) - set(CHEAP_BASELINES))
    if unknown:
        raise ValueError(f"evaluate_run.baselines: unknown {unknown}; choose from {sorted(CHEAP_BASELINES)}")
    workdir = run.workdir
    root = run.layout.embeddings(embeddings)
    member_dir = run.layout.members(split, embeddings)
    loaded = embedded_split(run.spec.feed, root, split)
    training, members, evaluated = loaded.training, loaded.members, loaded.evaluated
    report = evaluate_embeddings(loaded.member_ids.tolist(), loaded.member_vectors, loaded.items, evaluated, training,
                                 dims or tower_settings(root / ITEMS)["dims"], ks, serving_k, exclude, ann,
                                 progress=progress)
    report.update(split=split, members_in_split=len(members), members_evaluated=len(evaluated),
                  model=tower_settings(member_dir)["model"])
    warn_if_stale(workdir, member_dir, report["model"])
    if "sasrec" in baselines and training.events is None:  # the prepared records keep no order
        training.events = member_events(members, training)
    report["baselines"] = {name: evaluate_recommender(CHEAP_BASELINES[name]().fit(training), evaluated, training, ks,
                                                      serving_k, exclude, progress) for name in baselines}
    out = workdir / output
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{split}.json").write_text(json.dumps(report, indent=1, default=float))
    print_table({**{f"d={d}": r for d, r in report["by_dim"].items()}, **report["baselines"]},
                title=f"{split}: {len(evaluated)} members")
    if "ann" in report:
        print_table({"ScaNN-served": {"metrics": report["ann"]["served"]}})
        print("ANN recall against exact search: " + ", ".join(
            f"@{k.split('@')[1]} {v:.4f}" for k, v in report["ann"].items() if k.startswith("ann_recall")))
    corr = report["popularity_similarity"]
    print(f"popularity-similarity correlation: Spearman {corr['spearman']:.3f}, Pearson (log popularity) "
          f"{corr['pearson_log']:.3f} over {corr['pairs']:,} member-item pairs")
    return report
