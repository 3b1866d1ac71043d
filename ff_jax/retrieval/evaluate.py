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
Embeddings add: one report per Matryoshka prefix size, the recall of each index in `indexes` against
the first, exact search by default (and the metrics of the lists it serves; ScaNN by default, any kind
registered in ff_jax.retrieval.index.INDEX_KINDS), and the paper's popularity-similarity correlation.
The per-recommender path (`rank`, `evaluate_recommender`) is ff_jax.retrieval.recommender_eval.
`evaluate_run` is the gin entry of `ff-jax eval` (ff_jax/cli.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import gin
import numpy as np
from absl import logging
import pandas as pd
from rich.console import Console
from rich.table import Table

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval import baselines, metrics
from ff_jax.retrieval.baselines.simple import Popularity, RandomScores
from ff_jax.retrieval.embedding_store import read_tower, tower_settings
from ff_jax.retrieval.eval_data import feed_eval_data
from ff_jax.retrieval.index import INDEX_KINDS
from ff_jax.train.checkpointing import newest_sealed_step
from ff_jax.train.layout import EMBEDDINGS, ITEMS, members_folder
from ff_jax.train.run import Run
from ff_jax.retrieval.recommender import (EmbeddingRecommender, Recommender, TrainingData, corpus_order,
                                          member_events, unit_rows)
from ff_jax.retrieval.metrics import top_k  # imported from here by callers
# One recommender's ranking and metrics, under the names callers have always imported from here.
from ff_jax.retrieval.recommender_eval import (DEFAULT_KS, EXCLUDE_MODES, RANK_THREADS, SERVING_K, cutoffs,
                                               evaluate_recommender, excluded_items, figures_of_ranking, fresh_items,
                                               metrics_of_ranking, rank)


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


# `ff-jax eval`'s indexes (keys of INDEX_KINDS): the first is the reference the others are measured
# against. By default ScaNN against exact search.
INDEXES = ("exact", "scann")


def check_index_kinds(indexes: Sequence[str], where: str = "indexes (gin: evaluate_run.indexes)") -> tuple[str, ...]:
    """`indexes` as a tuple: a reference and at least one index, all distinct keys of INDEX_KINDS."""
    indexes = tuple(indexes)
    unknown = sorted(set(indexes) - set(INDEX_KINDS))
    if unknown:
        raise ValueError(f"{where}: unknown index kind(s) {unknown}; registered: {sorted(INDEX_KINDS)}")
    if len(indexes) < 2 or len(set(indexes)) != len(indexes):
        raise ValueError(f"{where}: name the reference, then each index to measure against it, once each "
                         f"(e.g. {INDEXES}), got {indexes}; to skip the comparison set evaluate_run.ann = False")
    return indexes


def index_reports(member_vectors: np.ndarray, item_vectors: np.ndarray, members: Sequence[EvalMember],
                  data: TrainingData, ks: Sequence[int], exclude: str = "engaged", indexes: Sequence[str] = INDEXES,
                  configs: dict | None = None) -> dict[str, dict]:
    """Each index kind after the first in `indexes` against the first (the reference, normally exact
    search), over the same vectors and exclusions: {kind: {"ann_recall@K": its recall of the
    reference's top-K for each K, "served": the retrieval metrics of its lists, and "<kind>_leaves"
    for an index with leaves}}. Each index is `INDEX_KINDS[kind]()`, or `INDEX_KINDS[kind](configs[kind])`."""
    indexes = check_index_kinds(indexes)
    configs = configs or {}
    corpus = np.asarray(data.corpus_ids)
    excluded = excluded_items(members, exclude)

    def served(kind: str):
        index = INDEX_KINDS[kind](*([configs[kind]] if kind in configs else [])).build(item_vectors, corpus)
        return index, index.search(member_vectors, max(ks), exclude=excluded)[1]

    _, truth = served(indexes[0])
    reports = {}
    for kind in indexes[1:]:
        index, found = served(kind)
        recall = {f"ann_recall@{c}": metrics.ann_recall(found[:, :c], truth[:, :c]) for c in ks}
        leaves = {f"{kind}_leaves": index.num_leaves} if hasattr(index, "num_leaves") else {}
        ranked = pd.Index(data.corpus_ids).get_indexer(found.ravel()).reshape(found.shape)  # pads -> -1
        reports[kind] = {**recall, **leaves, "served": metrics_of_ranking(ranked, members, data, ks)}
    return reports


def ann_report(member_vectors: np.ndarray, item_vectors: np.ndarray, members: Sequence[EvalMember],
               data: TrainingData, ks: Sequence[int], exclude: str = "engaged", scann_config=None) -> dict:
    """ScaNN against exact search over the same vectors: recall of the exact top-k for each k, and
    the retrieval metrics of the ScaNN-served lists (index_reports' "scann" entry)."""
    configs = {"scann": scann_config} if scann_config is not None else {}
    return index_reports(member_vectors, item_vectors, members, data, ks, exclude, ("exact", "scann"), configs)["scann"]


def evaluate_embeddings(member_ids: Sequence[str], member_vectors: np.ndarray, item_vectors: np.ndarray,
                        members: Sequence[EvalMember], data: TrainingData, dims: Sequence[int] | None = None,
                        ks: Sequence[int] = DEFAULT_KS, serving_k: int | None = SERVING_K,
                        exclude: str = "engaged", ann: bool = True, scann_config=None,
                        progress: bool = True, name: str = "dual encoder", indexes: Sequence[str] = INDEXES) -> dict:
    """Reports of an embedding model: per Matryoshka prefix size in `dims` (default: the full width),
    at the full width each index of `indexes` against the first (see index_reports), and the
    popularity-similarity correlation. "ann" repeats the first index measured (ScaNN by default)."""
    if ann:
        indexes = check_index_kinds(indexes)  # before any ranking: a typo fails at once
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
        configs = {"scann": scann_config} if scann_config is not None else {}
        report["index_reference"] = indexes[0]
        report["indexes"] = index_reports(evaluated, full.items, members, data, chosen, exclude, indexes, configs)
        report["ann"] = report["indexes"][indexes[1]]
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


def print_index_reports(reports: dict[str, dict], reference: str) -> None:
    """index_reports as a table of the served lists, one row per index, and each index's recall."""
    print_table({f"{kind}-served": {"metrics": report["served"]} for kind, report in reports.items()})
    for kind, report in reports.items():
        print(f"{kind} recall against {reference} search: " + ", ".join(
            f"@{k.split('@')[1]} {v:.4f}" for k, v in report.items() if k.startswith("ann_recall")))


# ----------------------------------------------------------------------------- `ff-jax eval`


# Fitted in seconds, so `ff-jax eval` can show them beside the model on the same members.
# Baselines `ff-jax eval` ranks beside the model: they need only the training interactions. ALS
# and BPR use the settings chosen on MovieLens-100k's validation split (docs/retrieval_eval.md);
# `implicit` loads only when ALS or BPR fits.
# SASRec (about a minute on MovieLens-100k) trains on the members' histories in time order.
CHEAP_BASELINES = {"random": RandomScores, "popularity": Popularity, "itemknn": baselines.ItemKNN,
                   "als": baselines.ALS, "bpr": baselines.BPR, "sasrec": baselines.SASRec}


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
                 progress: bool = True, indexes: Sequence[str] = INDEXES, sample: int | None = None) -> dict:
    """Evaluates the embeddings `ff-jax embed` wrote under `<workdir>/<embeddings>/` on `split` of the
    run's dataset; writes `<workdir>/<output>/metrics_<split>.json` and prints a table.
    dims: Matryoshka widths to report (default: those the embed job stored). baselines: names from
    CHEAP_BASELINES ranked for the same members and shown in the same table. indexes: with `ann`, index kinds
    (INDEX_KINDS) each measured against the first, e.g. ("exact", "scann", "faiss"). sample: rank only
    this many of the members, drawn at random (seed 0) and the same for the model and every baseline,
    where ranking them all takes too long (68k members x 1M items: about 12 minutes a method here)."""
    if sample is not None and sample < 1:
        raise ValueError(f"evaluate_run.sample must be a positive number of members, got {sample}")
    unknown = sorted(set(baselines) - set(CHEAP_BASELINES))
    if unknown:
        raise ValueError(f"evaluate_run.baselines: unknown {unknown}; choose from {sorted(CHEAP_BASELINES)}")
    workdir = run.workdir
    root = run.layout.embeddings(embeddings)
    member_dir = run.layout.members(split, embeddings)
    loaded = embedded_split(run.spec.feed, root, split)
    training, members, evaluated = loaded.training, loaded.members, loaded.evaluated
    sampled = sample is not None and sample < len(evaluated)  # else every member is ranked
    if sampled:
        chosen = np.sort(np.random.default_rng(0).choice(len(evaluated), sample, replace=False))
        evaluated = [evaluated[i] for i in chosen]
    report = evaluate_embeddings(loaded.member_ids.tolist(), loaded.member_vectors, loaded.items, evaluated, training,
                                 dims or tower_settings(root / ITEMS)["dims"], ks, serving_k, exclude, ann,
                                 progress=progress, indexes=indexes)
    report.update(split=split, members_in_split=len(members), members_evaluated=len(evaluated),
                  model=tower_settings(member_dir)["model"])
    if sampled:  # which members the figures are of
        report.update(members_sampled_from=len(loaded.evaluated), sampled_members=[m.user_id for m in evaluated])
    warn_if_stale(workdir, member_dir, report["model"])
    if "sasrec" in baselines and training.events is None:  # the prepared records keep no order
        training.events = member_events(members, training)
    report["baselines"] = {name: evaluate_recommender(CHEAP_BASELINES[name]().fit(training), evaluated, training, ks,
                                                      serving_k, exclude, progress) for name in baselines}
    out = workdir / output
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{split}.json").write_text(json.dumps(report, indent=1, default=float))
    print_table({**{f"d={d}": r for d, r in report["by_dim"].items()}, **report["baselines"]},
                title=f"{split}: {len(evaluated)} members" + (
                    f" (a random sample of {len(loaded.evaluated):,})" if sampled else ""))
    if "indexes" in report:
        print_index_reports(report["indexes"], report["index_reference"])
    corr = report["popularity_similarity"]
    print(f"popularity-similarity correlation: Spearman {corr['spearman']:.3f}, Pearson (log popularity) "
          f"{corr['pearson_log']:.3f} over {corr['pairs']:,} member-item pairs")
    return report
