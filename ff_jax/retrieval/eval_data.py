"""What `ff-jax eval` needs from a prepared feed dataset, in the shapes the evaluation uses.

The member records of the evaluated split carry everything per member (held-out `target_ids`,
`engaged_history_ids` removed from the ranking, `cohort`); the corpus builder lists every item.
Item popularity (for the popularity-similarity correlation) counts the members who engaged with
each item before the evaluated period: the `positive_id` of every train record, plus, when the
test split is evaluated, the validation records' targets — the same engagements
`ff_jax.retrieval.recommender.training_data` uses for the tables the dataset was prepared from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from ff_jax.data.pipeline import as_text
from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import SPLITS, TrainingData, binary_matrix


def read_records(source: Sequence, chunk: int = 1024) -> Iterator[dict]:
    """Every record of a data source, fetched `chunk` at a time when it supports batched reads."""
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        batch = source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]
        yield from batch


def ids_only(source: Sequence) -> Sequence:
    """A prepared split without its prompt fields, when the source can skip rendering them."""
    return source.without_prompts() if hasattr(source, "without_prompts") else source


def eval_members(records: Sequence[dict]) -> list[EvalMember]:
    """EvalMembers of evaluation records; the history is the engaged history (what is excluded)."""
    members = []
    for r in read_records(ids_only(records)):
        history = [as_text(i) for i in r["engaged_history_ids"]]
        members.append(EvalMember(as_text(r["user_id"]), history, [True] * len(history),
                                  [as_text(t) for t in r["target_ids"]], as_text(r["cohort"]), int(r["timestamp"])))
    return members


def prepared_eval_data(sources: dict, corpus: Sequence[dict], split: str = "test") -> tuple[TrainingData, list[EvalMember]]:
    """(TrainingData over the corpus, members of `split`) from a dataset's split sources and its
    corpus source (ff_jax.data.prepared.open_prepared of the dataset and `<dataset>_corpus`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    item_ids, texts = [], []
    for r in read_records(corpus):
        item_ids.append(as_text(r["item_id"]))
        texts.append(as_text(r["item_prompt"]))
    pairs = [(as_text(r["user_id"]), as_text(r["positive_id"])) for r in read_records(ids_only(sources["train"]))]
    if split == "test":
        pairs += [(as_text(r["user_id"]), as_text(t)) for r in read_records(ids_only(sources["validation"])) for t in r["target_ids"]]
    members = eval_members(sources[split])
    users = list(dict.fromkeys([u for u, _ in pairs] + [m.user_id for m in members]))
    user_codes = pd.Index(users).get_indexer([u for u, _ in pairs])
    item_codes = pd.Index(item_ids).get_indexer([i for _, i in pairs])
    if (item_codes < 0).any():
        raise ValueError(f"train records name item {pairs[int(np.argmin(item_codes))][1]!r}, missing from the corpus")
    matrix = binary_matrix(user_codes, item_codes, (len(users), len(item_ids)))
    items = pd.DataFrame({"item_id": item_ids, "text": texts})
    return TrainingData(item_ids, items, users, matrix), members


def feed_eval_data(data, split: str = "test") -> tuple[TrainingData, list[EvalMember]]:
    """`prepared_eval_data` of a training run's dataset (a ff_jax.data.feed_data.FeedData):
    what `ff-jax eval` ranks."""
    corpus = data.open_dataset(f"{data.dataset}_corpus")[0]["corpus"]
    return prepared_eval_data(data.open_dataset(data.dataset)[0], corpus, split)
