"""The one interface every offline-evaluated recommender implements, trained dual encoder or baseline.

    rec = SomeBaseline(...).fit(training_data(tables, splits))   # learns from the training period only
    scores = rec.score(splits.test[:256])                        # float32 [members, corpus items]

A recommender scores every corpus item for a batch of members (`EvalMember`: user id, history,
targets, cohort); `ff_jax.retrieval.evaluate` turns the scores into ranked lists with the member's
history removed and computes the metrics, so baselines and the dual encoder are measured by the
same code. Embedding models (the dual encoder, MiniLM, the untuned backbone) plug in through
`EmbeddingRecommender`: cosine between a member's vector and every item's.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ff_jax.data.splits import TEST, TRAIN, EvalMember, Splits
from ff_jax.data.tables import FeedTables
from ff_jax.rows import unit_rows  # noqa: F401  (re-exported: baselines normalise with it)

SPLITS = ("validation", "test")


@dataclasses.dataclass
class TrainingData:
    """What a recommender may learn from when evaluated on one split.

    `engagements` [users, items] is 1 where the member engaged with the item before the evaluated
    period: before validation for the validation split (the training period), before the test
    targets for the test split (training + validation periods), as the protocol's history is.
    Columns follow `corpus_ids`; `items` is the items table in the same order.

    `events` (optional) is the same period's interactions in time order, for sequential models:
    columns `user` (row of `user_ids`), `item` (corpus position) and `engaged`, oldest first (ties in
    the tables' order), engaged or not, repeats kept. `training_data` fills it; None where the
    source has no order (see `member_events`).
    """

    corpus_ids: list[str]
    items: pd.DataFrame
    user_ids: list[str]
    engagements: sp.csr_matrix
    events: pd.DataFrame | None = None

    def __post_init__(self):
        shape = (len(self.user_ids), len(self.corpus_ids))
        if self.engagements.shape != shape:
            raise ValueError(f"engagements has shape {self.engagements.shape}; expected {shape} "
                             "(users x corpus items)")
        if len(self.items) != len(self.corpus_ids):
            raise ValueError(f"items has {len(self.items)} rows for {len(self.corpus_ids)} corpus ids")
        self._position = {item: i for i, item in enumerate(self.corpus_ids)}
        self._user_row = {user: i for i, user in enumerate(self.user_ids)}

    @property
    def num_items(self) -> int:
        return len(self.corpus_ids)

    def popularity(self) -> np.ndarray:
        """Members who engaged with each item (float64 [items])."""
        return np.asarray((self.engagements > 0).sum(axis=0), np.float64).ravel()

    def positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """Corpus positions of `item_ids` (int64); unknown ids are an error that names one."""
        try:
            return np.fromiter((self._position[i] for i in item_ids), np.int64, count=len(item_ids))
        except KeyError as err:
            raise KeyError(f"item id {err.args[0]!r} is not in the corpus") from None

    def user_row(self, user_id: str) -> int | None:
        return self._user_row.get(user_id)

    def history_matrix(self, members: Sequence[EvalMember]) -> sp.csr_matrix:
        """[members, items] 1 on each member's engaged history (fold-in input for item-based models)."""
        histories = [self.positions(m.engaged_history) for m in members]
        rows = np.repeat(np.arange(len(members)), [len(h) for h in histories])
        cols = np.concatenate(histories) if histories else np.zeros(0, np.int64)
        return binary_matrix(rows, cols, (len(members), self.num_items))


def training_data(tables: FeedTables, splits: Splits, split: str = "test") -> TrainingData:
    """The engagements a recommender may see when `split`'s members are evaluated (see TrainingData)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    inter = tables.interactions
    if len(splits.period) != len(inter):
        raise ValueError(f"splits.period has {len(splits.period)} rows but {tables.name} has {len(inter)} "
                         "interactions: the splits were made from other tables")
    allowed = splits.period < TEST if split == "test" else splits.period == TRAIN
    rows = inter[allowed]
    engaged = rows["engaged"].to_numpy(bool)
    corpus = list(splits.corpus_ids)
    items = tables.items.set_index("item_id").loc[corpus].reset_index()
    users = tables.users["user_id"].astype(str).tolist()
    user_codes = pd.Index(users).get_indexer(rows["user_id"])
    item_codes = pd.Index(corpus).get_indexer(rows["item_id"])
    if (user_codes[engaged] < 0).any() or (item_codes[engaged] < 0).any():
        raise ValueError(f"{tables.name}: interactions name users or items missing from the tables")
    matrix = binary_matrix(user_codes[engaged], item_codes[engaged], (len(users), len(corpus)))
    known = (user_codes >= 0) & (item_codes >= 0)  # an impression may name an item outside the corpus
    events = pd.DataFrame({"user": user_codes[known].astype(np.int32), "item": item_codes[known].astype(np.int32),
                           "engaged": engaged[known]})
    return TrainingData(corpus, items, users, matrix, events)


def member_events(members: Sequence[EvalMember], data: TrainingData) -> pd.DataFrame:
    """`TrainingData.events` rebuilt from the members' histories (oldest first), for data without them.

    A member's history is every interaction before their first target, so for the members of the
    evaluated split it is their part of the training period; users outside `members` get no events.
    History items outside the corpus and members outside `data.user_ids` are left out.
    """
    corpus = pd.Index(data.corpus_ids)
    users, items, engaged = [], [], []
    for m in members:
        row = data.user_row(m.user_id)
        if row is None or not m.history:
            continue
        codes = corpus.get_indexer(list(m.history))
        keep = codes >= 0
        users.append(np.full(int(keep.sum()), row, np.int32))
        items.append(codes[keep].astype(np.int32))
        engaged.append(np.asarray(m.history_engaged, bool)[keep])
    empty = np.zeros(0, np.int32)
    return pd.DataFrame({"user": np.concatenate(users) if users else empty,
                         "item": np.concatenate(items) if items else empty,
                         "engaged": np.concatenate(engaged) if engaged else np.zeros(0, bool)})


class Recommender(abc.ABC):
    """Scores every corpus item for a batch of members. `fit` sees only `TrainingData`."""

    name: str = "recommender"

    def fit(self, data: TrainingData) -> Recommender:
        self.data = data
        return self

    @abc.abstractmethod
    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        """float32 [len(members), corpus items], higher = better; history exclusion is done by the caller."""


class EmbeddingRecommender(Recommender):
    """Cosine between a member's vector and each item's: how dual encoders enter the evaluation.

    `dim` keeps the first `dim` components (a Matryoshka prefix) before re-normalising.
    """

    def __init__(self, member_ids: Sequence[str], member_vectors: np.ndarray, item_vectors: np.ndarray,
                 dim: int | None = None, name: str = "embeddings"):
        full = np.asarray(item_vectors).shape[-1]
        if dim is not None and not 0 < dim <= full:
            raise ValueError(f"dim={dim} is outside 1..{full} (the embeddings' width)")
        if np.asarray(member_vectors).shape[-1] != full:
            raise ValueError(f"dimension mismatch: member vectors are {np.asarray(member_vectors).shape[-1]}-d, "
                             f"item vectors {full}-d")
        if len(member_ids) != len(member_vectors):
            raise ValueError(f"{len(member_ids)} member ids for {len(member_vectors)} member vectors")
        cut = slice(0, dim)
        self.members = unit_rows(np.asarray(member_vectors)[:, cut], "member vectors")
        self.items = unit_rows(np.asarray(item_vectors)[:, cut], "item vectors")
        self.row = {m: i for i, m in enumerate(member_ids)}
        self.name = name

    def fit(self, data: TrainingData) -> EmbeddingRecommender:
        if data.num_items != self.items.shape[0]:
            raise ValueError(f"{self.items.shape[0]} item vectors for a corpus of {data.num_items} items")
        return super().fit(data)

    def member_rows(self, members: Sequence[EvalMember]) -> np.ndarray:
        missing = [m.user_id for m in members if m.user_id not in self.row]
        if missing:
            raise KeyError(f"no member embedding for user(s) {missing[:5]} ({len(missing)} in all)")
        return np.fromiter((self.row[m.user_id] for m in members), np.int64, count=len(members))

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return self.members[self.member_rows(members)] @ self.items.T


def corpus_order(ids: np.ndarray, vectors: np.ndarray, corpus_ids: Sequence[str], where: str) -> np.ndarray:
    """`vectors` re-ordered to the corpus order; every corpus item must have one."""
    rows = pd.Index(ids).get_indexer(list(corpus_ids))
    if (rows < 0).any():
        missing = [c for c, r in zip(corpus_ids, rows) if r < 0]
        raise ValueError(f"{where}: no embedding for {len(missing)} corpus items, e.g. {missing[:3]} "
                         "(embed the whole corpus: EmbedConfig.max_records=None)")
    return vectors[rows]


def binary_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A float32 CSR matrix with 1 at each (row, col): repeated engagements count once."""
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)  # duplicates summed
    matrix.data[:] = 1.0
    return matrix
