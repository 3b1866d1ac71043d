"""`rerank_run(...)`: the retriever's top-K reranked by a trained ranker, the gin entry behind
`ff-jax eval --workdir=RANKER_RUN` (ff_jax/cli.py routes a ranker workdir here).

For every member of `split` with a held-out target: the dual encoder's embeddings (written by
`ff-jax embed` under `<retriever>/embeddings/`) rank the corpus by cosine as `ff-jax eval` does,
the member's engaged history excluded (the evaluation protocol of ff_jax.retrieval.evaluate).
The ranker then scores those top_k candidates against the member's context, prefilled once per
member (the cache path), and sorts them. Both lists go through the same `metrics_of_ranking`, so the report
puts NDCG@10, R@10 and MRR after reranking next to retrieval alone, overall and per cohort.
"""

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import gin
import numpy as np
from tqdm.auto import tqdm

from ff_jax.data.pipeline import as_text
from ff_jax.model.sharding import logical_axis_rules, make_mesh
from ff_jax.rank.checkpoints import DUAL_ENCODER, RANKER, check_kind, restore_weights
from ff_jax.rank.cross_encoder import score_candidates
from ff_jax.rank.train import build_ranker, model_arguments, train_ranker
from ff_jax.retrieval.embedding_store import read_tower
from ff_jax.retrieval.eval_data import feed_eval_data, read_records
from ff_jax.retrieval.evaluate import metrics_of_ranking, print_table, rank
from ff_jax.retrieval.recommender import EmbeddingRecommender, corpus_order

COLUMNS = ("ndcg@10", "recall@10", "mrr")


def load_ranker(workdir: Path, mesh=None, rules=None):
    """(CrossEncoder with the newest checkpoint's weights, tokenizer, RankerData) of a ranker run
    whose config.gin is parsed."""
    check_kind(workdir, RANKER)
    bound = gin.get_bindings(train_ranker)
    data = bound.get("data")
    if data is None:
        raise ValueError(f"{workdir}: no ranker data bound (train_ranker.data); is config.gin a ranker run's?")
    rules = rules or logical_axis_rules()
    mesh = mesh or make_mesh(num_devices=1)
    model_config, pretrained, overrides = model_arguments()
    model, tokenizer = build_ranker(data, model_config, pretrained, dict(overrides or {}), None, mesh, rules,
                                    bound.get("seed", 0))
    return restore_weights(workdir, model, RANKER), tokenizer, data


@gin.configurable(denylist=["workdir"])
def rerank_run(workdir: str, retriever: Optional[str] = None, top_k: int = 100, split: str = "test",
               ks: Sequence[int] = (10, 50, 100), max_members: int = 0, output: str = "eval",
               progress: bool = True) -> dict:
    """Reranks the retriever's top_k for each member of `split`; writes
    `<workdir>/<output>/rerank_<split>.json` and prints retrieval alone beside reranked.
    max_members: evaluate the first this many members with a target (0: all)."""
    workdir = Path(workdir)
    if not retriever:
        raise ValueError("rerank_run.retriever is unset: give the dual encoder's workdir (--gin.RETRIEVER=DIR) "
                         "where `ff-jax embed` wrote its embeddings")
    retriever = Path(retriever)
    check_kind(retriever, DUAL_ENCODER)
    model, tokenizer, data = load_ranker(workdir)
    training, members = feed_eval_data(data.feed, split)
    root = retriever / "embeddings"
    item_ids, items = read_tower(root / "items")
    items = corpus_order(item_ids, items, training.corpus_ids, str(root / "items"))
    member_ids, member_vectors = read_tower(root / f"members_{split}")
    embedded = set(member_ids.tolist())
    evaluated = [m for m in members if m.user_id in embedded and m.targets]
    if max_members:
        evaluated = evaluated[:max_members]
    if not evaluated:
        raise ValueError(f"{root / f'members_{split}'}: none of the {len(members)} {split} members has an embedding")
    # The retriever's lists exactly as `ff-jax eval` ranks them (cosine, engaged history excluded).
    k = min(top_k, training.num_items)
    retriever_model = EmbeddingRecommender(member_ids.tolist(), member_vectors, items).fit(training)
    retrieved = rank(retriever_model, evaluated, training, k, "engaged", progress=progress)

    sources, fmt, _ = data.feed.open_dataset(data.feed.dataset)
    records = {as_text(r["user_id"]): r for r in read_records(sources[split])}
    member_tokens, item_tokens, question = data.prompt_tokenizers(tokenizer, fmt)
    candidates = [list(ids) + question for ids in item_tokens.items(list(training.items["text"]))]
    budget = data.ranker.candidate_budget
    reranked = np.full_like(retrieved, -1)
    start = time.perf_counter()
    for i, member in enumerate(tqdm(evaluated, desc="rerank", disable=not progress)):
        positions = retrieved[i][retrieved[i] >= 0]
        context = list(member_tokens.member(records[member.user_id]))
        scores = score_candidates(model, context, [candidates[p] for p in positions], budget, mode="cache",
                                  batch=min(k, 128), max_context=data.context_budget)
        reranked[i, :len(positions)] = positions[np.argsort(-scores, kind="stable")]
    seconds = time.perf_counter() - start
    cut = sorted({c for c in ks if c <= k} | {k})
    report = {"split": split, "members": len(evaluated), "top_k": k, "ks": cut, "rerank_seconds": seconds,
              "retriever": str(retriever),
              "retrieval": {"metrics": metrics_of_ranking(retrieved, evaluated, training, cut)},
              "reranked": {"metrics": metrics_of_ranking(reranked, evaluated, training, cut)}}
    out = workdir / output
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rerank_{split}.json").write_text(json.dumps(report, indent=1, default=float))
    print_table({"retrieval": report["retrieval"], f"reranked top-{k}": report["reranked"]},
                columns=(*COLUMNS, f"recall@{k}"),
                title=f"{split}: {len(evaluated)} members, top-{k} reranked in {seconds:.0f} s")
    return report
