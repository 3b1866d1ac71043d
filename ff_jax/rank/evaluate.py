"""`rerank_run(...)`: the retriever's top-K reranked by a trained ranker, the gin entry behind
`ff-jax eval --workdir=RANKER_RUN` (ff_jax/cli.py routes a ranker workdir here).

For every member of `split` with a held-out target: the dual encoder's embeddings (written by
`ff-jax embed` under `<retriever>/embeddings/`) rank the corpus by cosine as `ff-jax eval` does,
the member's engaged history excluded (the evaluation protocol of ff_jax.retrieval.evaluate).
The ranker then scores those top_k candidates against the member's context, prefilled once per
member (the cache path), and sorts them. Both lists go through the same `figures_of_ranking`, so the report
puts NDCG@10, R@10 and MRR after reranking next to retrieval alone, overall, per member cohort, and
on fresh and seen targets (an item with no engagement in training, or with some).

Score fusion: the reranked order sorts `ranker score + retrieval_weight x retrieval cosine`.
The default, "trained", is the weight the ranker was trained with (`RankerData.retrieval_prior`;
0 for a ranker without: the ranker alone). A large weight keeps the retriever's order and lets
the ranker break near-ties. `retrieval_weight=None` chooses the weight on the validation split
(the retriever's `members_validation` embeddings): the grid weight with the best NDCG@10 there,
its curve kept in the report. Test members never choose it.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import gin
import numpy as np
from tqdm.auto import tqdm

from ff_jax import files
from ff_jax.data.pipeline import as_text
from ff_jax.model.sharding import logical_axis_rules, make_mesh
from ff_jax.rank.checkpoints import restore_weights
from ff_jax.rank.cross_encoder import score_candidates
from ff_jax.rank.train import build_ranker
from ff_jax.retrieval.eval_data import read_records
from ff_jax.retrieval.evaluate import embedded_split, figures_of_ranking, metrics_of_ranking, print_table, rank
from ff_jax.retrieval.paired import compare_rankings
from ff_jax.train.layout import Layout
from ff_jax.train.run import DUAL_ENCODER, RANKER, Run, check_kind

COLUMNS = ("ndcg@10", "recall@10", "mrr")


def load_ranker(run: Run, mesh=None, rules=None):
    """(CrossEncoder with the newest checkpoint's weights, tokenizer, RankerData) of a ranker run."""
    check_kind(run.workdir, RANKER)
    spec = run.spec
    rules = rules or logical_axis_rules()
    mesh = mesh or make_mesh(num_devices=1)
    model, tokenizer = build_ranker(spec.data, spec.model_config, spec.pretrained, spec.model_overrides, None, mesh,
                                    rules, spec.seed)
    return restore_weights(run.workdir, model, RANKER), tokenizer, spec.data


WEIGHT_GRID = (0.0, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)


@dataclasses.dataclass
class Reranking:
    """One split's retrieved lists, with the ranker's and the retriever's scores of each candidate."""

    members: list
    retrieved: np.ndarray            # [members, k] corpus positions, -1 past the end
    ranker: list[np.ndarray]         # per member, one score per retrieved candidate
    cosine: list[np.ndarray]         # per member, the retriever's cosine of each
    seconds: float

    def order(self, weight: float) -> np.ndarray:
        out = np.full_like(self.retrieved, -1)
        for i, (ranker, cosine) in enumerate(zip(self.ranker, self.cosine)):
            positions = self.retrieved[i][: len(ranker)]
            out[i, : len(ranker)] = positions[np.argsort(-(ranker + weight * cosine), kind="stable")]
        return out


def rerank_split(model, tokenizer, data, retriever: Path, split: str, k: int, max_members: int, progress: bool):
    """(TrainingData, Reranking) of `split`: the retriever's top k per member (as `ff-jax eval` ranks
    them), each scored by the ranker (context prefilled once per member)."""
    loaded = embedded_split(data.feed, Layout(retriever).embeddings(), split)
    training, evaluated = loaded.training, loaded.evaluated[: max_members or None]
    k = min(k, training.num_items)
    retriever_model = loaded.recommender()
    retrieved = rank(retriever_model, evaluated, training, k, "engaged", progress=progress)
    member_rows = retriever_model.member_rows(evaluated)

    sources, fmt, _ = data.feed.open_dataset(data.feed.dataset)
    records = {as_text(r["user_id"]): r for r in read_records(sources[split])}
    member_tokens, item_tokens, question = data.prompt_tokenizers(tokenizer, fmt)
    candidates = [list(ids) + question for ids in item_tokens.items(list(training.items["text"]))]
    ranker, cosine = [], []
    start = time.perf_counter()
    for i, member in enumerate(tqdm(evaluated, desc=f"rerank {split}", disable=not progress)):
        positions = retrieved[i][retrieved[i] >= 0]
        context = list(member_tokens.member(records[member.user_id]))
        ranker.append(score_candidates(model, context, [candidates[p] for p in positions], data.ranker.candidate_budget,
                                       mode="cache", batch=min(k, 128), max_context=data.context_budget))
        cosine.append(retriever_model.items[positions] @ retriever_model.members[member_rows[i]])
    return training, Reranking(evaluated, retrieved, ranker, cosine, time.perf_counter() - start)


def ndcg_gain(before: np.ndarray, after: np.ndarray, members, data, k: int = 10, seed: int = 0) -> dict:
    """The mean per-member change of NDCG@k from `before` to `after` (same members), with a 95%
    paired bootstrap interval over members: whether a gain is more than noise."""
    return compare_rankings(before, after, members, data, [f"ndcg@{k}"], seed)[f"ndcg@{k}"]


def choose_weight(model, tokenizer, data, retriever: Path, k: int, progress: bool) -> tuple[float, dict]:
    """The WEIGHT_GRID weight with the best validation NDCG@10, and the whole curve."""
    training, validation = rerank_split(model, tokenizer, data, retriever, "validation", k, 0, progress)
    curve = {w: metrics_of_ranking(validation.order(w), validation.members, training, [10])["all"]["ndcg@10"]
             for w in WEIGHT_GRID}
    best = max(curve, key=lambda w: (curve[w], -w))
    return best, {"validation_members": len(validation.members), "validation_ndcg@10": curve}


@gin.configurable(denylist=["run"])
def rerank_run(run: Run, retriever: Optional[str] = None, top_k: int = 100, split: str = "test",
               ks: Sequence[int] = (10, 50, 100), max_members: int = 0, output: str = "eval",
               retrieval_weight: Union[float, str, None] = "trained", progress: bool = True) -> dict:
    """Reranks the retriever's top_k for each member of `split`; writes
    `<workdir>/<output>/rerank_<split>.json` and prints retrieval alone beside reranked.
    max_members: evaluate the first this many members with a target (0: all). retrieval_weight:
    the fusion weight of the retriever's cosine (module doc); None: chosen on the validation split.
    retriever: the dual encoder's workdir (default: the one the ranker trained with, RankerData.retriever)."""
    workdir = run.workdir
    retriever = retriever or run.spec.data.retriever
    if not retriever:
        raise ValueError("rerank_run.retriever is unset: give the dual encoder's workdir (--gin.RETRIEVER=DIR) "
                         "where `ff-jax embed` wrote its embeddings")
    retriever = Path(retriever)
    check_kind(retriever, DUAL_ENCODER)
    model, tokenizer, data = load_ranker(run)
    fusion = {}
    if retrieval_weight == "trained":
        retrieval_weight = data.retrieval_prior
    elif isinstance(retrieval_weight, str):
        raise ValueError(f"rerank_run.retrieval_weight must be a number, None or 'trained', got {retrieval_weight!r}")
    if retrieval_weight is None:
        retrieval_weight, fusion = choose_weight(model, tokenizer, data, retriever, top_k, progress)
    training, run = rerank_split(model, tokenizer, data, retriever, split, top_k, max_members, progress)
    k = run.retrieved.shape[1]
    reranked = run.order(retrieval_weight)
    cut = sorted({c for c in ks if c <= k} | {k})

    def figures(ranked: np.ndarray) -> dict:  # by member cohort, and by fresh / seen targets
        metrics, freshness = figures_of_ranking(ranked, run.members, training, cut)
        return {"metrics": metrics, "freshness": freshness}

    report = {"split": split, "members": len(run.members), "top_k": k, "ks": cut, "rerank_seconds": run.seconds,
              "retriever": str(retriever), "retrieval_weight": retrieval_weight, **fusion,
              "retrieval": figures(run.retrieved), "reranked": figures(reranked),
              "ndcg@10_gain": ndcg_gain(run.retrieved, reranked, run.members, training)}
    rows = {"retrieval": report["retrieval"]}
    if retrieval_weight:
        report["ranker_alone"] = figures(run.order(0.0))
        rows["ranker alone"] = report["ranker_alone"]
    rows[f"reranked top-{k}" + (f", + {retrieval_weight:g} x cosine" if retrieval_weight else "")] = report["reranked"]
    out = workdir / output
    out.mkdir(parents=True, exist_ok=True)
    files.write_atomic(out / f"rerank_{split}.json", json.dumps(report, indent=1, default=float))
    print_table(rows, columns=(*COLUMNS, f"recall@{k}"),
                title=f"{split}: {len(run.members)} members, top-{k} reranked in {run.seconds:.0f} s")
    gain = report["ndcg@10_gain"]
    print(f"NDCG@10 reranked - retrieval: {gain['mean']:+.4f} (95% paired bootstrap over members: "
          f"{gain['ci95'][0]:+.4f} to {gain['ci95'][1]:+.4f})")
    return report
