"""RankerBatches from the prepared feed datasets (the dual encoder's, ff_jax.data.feed_data).

Each training record becomes one row: the member's context (its member prompt within
`context_budget`), then K = 1 + impressed + negatives candidates, each an item prompt plus the
ranker's question within `RankerConfig.candidate_budget`:
  - the engaged item (label 1);
  - up to `impressed` items the member was shown and did not engage with (the records' hard
    negatives, label 0);
  - negatives to fill the row (label 0): with `retriever` (a dual-encoder workdir where
    `ff-jax embed` wrote item embeddings), items drawn from a pool of `neighbour_pool` nearest
    items in that embedding space; else uniform over the corpus. `negatives_from` says nearest
    to what: "item", the engaged item (those a retriever would serve beside it); or "member",
    the record's own member vector (`ff-jax embed --gin.EmbedConfig.split=train` on the
    retriever), i.e. the list the retriever returns for this member at this point in time,
    which is exactly the list the ranker reorders at evaluation.
`retrieval_prior` w (with negatives_from="member"): each candidate also carries w x the
retriever's cosine of the record's member vector and the item (RankerBatch.prior), which the
objective adds to the ranker's score: the ranker learns to correct the retriever's order, and
evaluation and serving sort by the same sum. `retrieved_positives_only` (also "member"): train
only on the records whose engaged item is in their own retrieved pool, the lists where reordering
can change what evaluation counts.
The pipeline is grain's: index shuffle, per-record random draws seeded by the record's position
(`random_map`), fixed-shape rows, so the iterator's state resumes it exactly (orbax checkpoints).
"""

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import gin
import grain
import jax
import numpy as np

from ff_jax.data.batches import RankerBatch
from ff_jax.data.feed_data import FeedData
from ff_jax.data.pipeline import PromptTokenizer, as_text
from ff_jax.files import MANIFEST
from ff_jax.rank import layout
from ff_jax.rank.cross_encoder import RankerConfig
from ff_jax.retrieval.embed_job import training_record_index
from ff_jax.retrieval.embedding_store import read_tower
from ff_jax.train.layout import Layout
from ff_jax.train.run import DUAL_ENCODER, check_kind


NEGATIVE_SOURCES = ("item", "member")


def neighbours(vectors: np.ndarray, wanted: np.ndarray, count: int, chunk: int = 1024) -> np.ndarray:
    """[len(wanted), count] corpus positions nearest each wanted row by dot product, itself excluded."""
    return nearest(vectors[wanted], vectors, count, exclude=wanted, chunk=chunk)


def nearest(queries: np.ndarray, vectors: np.ndarray, count: int, exclude=None, chunk: int = 1024) -> np.ndarray:
    """[len(queries), count] positions of `vectors` nearest each query by dot product, best first;
    exclude[i], when given (a position or a list of them), is left out of row i."""
    out = np.zeros((len(queries), count), np.int64)
    for lo in range(0, len(queries), chunk):
        scores = queries[lo:lo + chunk] @ vectors.T
        if exclude is not None:
            for row, left_out in enumerate(exclude[lo:lo + chunk]):
                scores[row, left_out] = -np.inf
        top = np.argpartition(-scores, count, axis=1)[:, :count]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[lo:lo + chunk] = np.take_along_axis(top, order, axis=1)
    return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RankerData:
    """feed: the dataset (and its tokenizer choice) as the dual encoder reads it. K candidates per
    member: 1 + impressed + negatives. neighbour_pool: retrieved negatives are drawn from this many
    nearest items of the engaged one (negatives_from="item") or of the record's member vector
    ("member"). retrieval_prior: see the module doc (0: none)."""

    feed: FeedData = gin.REQUIRED
    ranker: RankerConfig = RankerConfig()
    context_budget: int = 512
    impressed: int = 2
    negatives: int = 5
    retriever: Optional[str] = None
    neighbour_pool: int = 20
    members_per_shard: int = 4
    negatives_from: str = "item"
    retrieval_prior: float = 0.0
    retrieved_positives_only: bool = False

    def __post_init__(self):
        if self.impressed < 0 or self.negatives < 0 or self.impressed + self.negatives < 1:
            raise ValueError("RankerData needs impressed + negatives >= 1 (and neither negative)")
        if self.negatives_from not in NEGATIVE_SOURCES:
            raise ValueError(f"RankerData.negatives_from must be one of {NEGATIVE_SOURCES}, "
                             f"got {self.negatives_from!r}")
        for field in ("retrieval_prior", "retrieved_positives_only"):
            if getattr(self, field) and (self.negatives_from != "member" or not self.retriever):
                raise ValueError(f"RankerData.{field} needs the retriever's training-record vectors: set "
                                 "RankerData.retriever and RankerData.negatives_from='member'")

    @property
    def candidates(self) -> int:
        return 1 + self.impressed + self.negatives

    @property
    def row_length(self) -> int:
        return self.context_budget + self.candidates * self.ranker.candidate_budget

    def prompt_tokenizers(self, tokenizer, fmt):
        """(member tokenizer, item tokenizer, question ids): the member context starts with BOS;
        the candidate is its item prompt (no BOS/EOS) then the question, within the budget."""
        question = tokenizer.encode(self.ranker.question)
        room = self.ranker.candidate_budget - len(question)
        if room < 4:
            raise ValueError(f"RankerConfig.question takes {len(question)} of the candidate_budget's "
                             f"{self.ranker.candidate_budget} tokens: raise the budget")
        batch = dataclasses.replace(self.feed.batch, length=max(self.context_budget, room),
                                    member_budget=self.context_budget, item_budget=room, mode="padded",
                                    add_eos=False)
        member = PromptTokenizer(tokenizer, fmt, batch)
        items = PromptTokenizer(tokenizer, fmt, dataclasses.replace(batch, add_bos=False))
        return member, items, question

    def corpus(self) -> tuple[list[str], list[str]]:
        source = self.feed.open_dataset(f"{self.feed.dataset}_corpus")[0]["corpus"]
        records = [source[i] for i in range(len(source))]
        return [as_text(r["item_id"]) for r in records], [as_text(r["item_prompt"]) for r in records]

    def train_iterator(self, tokenizer, num_shards: int, seed: int = 0):
        """An endless, checkpointable grain iterator of RankerBatch with N = num_shards."""
        sources, fmt, _ = self.feed.open_dataset(self.feed.dataset)
        item_ids, prompts = self.corpus()
        records = sources["train"]
        users = [as_text(records[i]["user_id"]) for i in range(len(records))]
        positives = [as_text(records[i]["positive_id"]) for i in range(len(records))]
        engaged = engaged_items(users, positives)
        pools, cosine = self._pools(item_ids, users, positives, engaged)
        make_row = _RowMaker(self, tokenizer, fmt, item_ids, prompts, pools, engaged, cosine)
        kept = self._trained_records(item_ids, positives, pools)
        # (record index, record): "member" pools are per record.
        ds = grain.MapDataset.source(kept).map(lambda index: (index, records[index]))
        if jax.process_count() > 1:
            ds = ds[jax.process_index()::jax.process_count()]
        ds = ds.shuffle(seed=seed).repeat(None).random_map(make_row, seed=seed)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.feed.read_threads, prefetch_buffer_size=16))
        rows = self.members_per_shard
        ds = ds.batch(num_shards * rows, drop_remainder=True,
                      batch_fn=lambda examples: _stack(examples, num_shards, rows))
        return iter(ds)

    def _pools(self, item_ids: list[str], users: list[str], positives: list[str], engaged: dict[str, set[str]]):
        """(pools, cosine). pools: without a retriever None; negatives_from="item": engaged item id →
        positions of its nearest items in the retriever's embeddings (only for items that are some
        record's engaged item); "member": record index → positions of the items nearest its member
        vector. cosine(record index, positions) → the retriever's cosines, with a retrieval prior."""
        if not self.retriever:
            return None, None
        check_kind(Path(self.retriever), DUAL_ENCODER)
        stored_ids, vectors = read_tower(Layout(self.retriever).items())
        order = {item: i for i, item in enumerate(stored_ids.tolist())}
        missing = [i for i in item_ids if i not in order]
        if missing:
            raise ValueError(f"{self.retriever}: the retriever's item embeddings lack {len(missing)} corpus items "
                             f"(first {missing[0]!r}); embed this dataset's corpus with it (`ff-jax embed`)")
        vectors = vectors[[order[i] for i in item_ids]]
        position = {item: i for i, item in enumerate(item_ids)}
        if self.negatives_from == "member":
            members = self._member_vectors(len(users))
            # The member's other engaged items are left out, as evaluation leaves out the engaged
            # history (and later engagements are not negatives); its own engaged item may be retrieved.
            exclude = [[position[i] for i in engaged[user] if i != positive] for user, positive in zip(users, positives)]
            near = nearest(members, vectors, min(self.neighbour_pool, len(vectors)), exclude=exclude)
            cosine = (lambda index, positions: vectors[positions] @ members[index]) if self.retrieval_prior else None
            return dict(enumerate(near)), cosine
        engaged_once = sorted(set(positives))
        near = neighbours(vectors, np.asarray([position[p] for p in engaged_once]), min(self.neighbour_pool,
                                                                                      len(item_ids) - 1))
        return dict(zip(engaged_once, near)), None

    def _trained_records(self, item_ids: list[str], positives: list[str], pools) -> Sequence[int]:
        """Indices of the training records rows are made from: all, or with retrieved_positives_only
        those whose engaged item is in their own pool."""
        if not self.retrieved_positives_only:
            return range(len(positives))
        position = {item: i for i, item in enumerate(item_ids)}
        kept = [i for i, positive in enumerate(positives) if position[positive] in pools[i]]
        if not kept:
            raise ValueError(f"RankerData.retrieved_positives_only: no training record has its engaged item in its "
                             f"retrieved top {self.neighbour_pool}; raise RankerData.neighbour_pool")
        return kept

    def _member_vectors(self, count: int) -> np.ndarray:
        """[records, E] the retriever's unit vector of each training record, in record order."""
        folder = Layout(self.retriever).members("train")
        if not (folder / MANIFEST).exists():
            raise ValueError(f"{folder}: no training-record embeddings; RankerData.negatives_from='member' needs "
                             f"them: ff-jax embed --workdir={self.retriever} --gin.EmbedConfig.split=train "
                             "--gin.EmbedConfig.towers=\"('member',)\"")
        ids, members = read_tower(folder)
        if len(ids) != count:
            raise ValueError(f"{folder}: {len(ids)} training records embedded, the dataset has {count}; "
                             "embed them again (--gin.EmbedConfig.overwrite=True)")
        out = np.zeros_like(members)
        out[[training_record_index(i) for i in ids.tolist()]] = members
        return out


def engaged_items(users: list[str], positives: list[str]) -> dict[str, set[str]]:
    """user id -> every item the member engaged with in the training split (record i: users[i]
    engaged with positives[i])."""
    out: dict[str, set[str]] = {}
    for user, item in zip(users, positives):
        out.setdefault(user, set()).add(item)
    return out


class _RowMaker:
    """A training record and a generator → one member row (dict of numpy arrays, no N/R axes)."""

    def __init__(self, config: RankerData, tokenizer, fmt, item_ids, prompts, pools, engaged: dict[str, set[str]],
                 cosine=None):
        self.config, self.item_ids, self.prompts, self.pools = config, item_ids, prompts, pools
        self.member, self.items, self.question = config.prompt_tokenizers(tokenizer, fmt)
        self.position = {item: i for i, item in enumerate(item_ids)}
        self.engaged, self.cosine = engaged, cosine

    def __call__(self, indexed: tuple[int, dict], rng: np.random.Generator) -> dict:
        c = self.config
        index, record = indexed
        positive = as_text(record["positive_id"])
        impressed = [as_text(i) for i in record["negative_ids"]][: c.impressed]
        # Nothing the member engaged with in training is a negative (the uniform top-up included).
        taken = {positive, *impressed, *self.engaged.get(as_text(record["user_id"]), ())}
        wanted = c.candidates - 1 - len(impressed)
        key = index if c.negatives_from == "member" else positive
        pool = self.pools.get(key) if self.pools is not None else None
        negatives = []
        if pool is not None:
            for p in rng.permutation(pool):
                if len(negatives) == wanted:
                    break
                if self.item_ids[p] not in taken:
                    negatives.append(self.item_ids[p])
                    taken.add(self.item_ids[p])
        while len(negatives) < wanted:  # uniform over the corpus (also tops up a short pool)
            item = self.item_ids[int(rng.integers(len(self.item_ids)))]
            if item not in taken or len(taken) >= len(self.item_ids):
                negatives.append(item)
                taken.add(item)
        chosen = [positive, *impressed, *negatives]
        candidates = [list(ids) + self.question
                      for ids in self.items.items([self.prompts[self.position[i]] for i in chosen])]
        rows = layout.multi_candidate_row(list(self.member.member(record)), candidates, c.ranker.candidate_budget,
                                          c.candidates, c.row_length)
        labels = np.zeros(c.candidates, np.float32)
        labels[0] = 1.0
        prior = np.zeros(c.candidates, np.float32)
        if self.cosine is not None:
            prior[: len(chosen)] = c.retrieval_prior * self.cosine(index, [self.position[i] for i in chosen])
        return dict(tokens=rows.tokens[0], segment_ids=rows.segment_ids[0], positions=rows.positions[0],
                    prefix_segments=rows.prefix_segments[0], last=rows.last[0], labels=labels,
                    candidate_mask=(rows.last[0] >= 0).astype(np.float32), example_mask=np.float32(1.0), prior=prior)


def _stack(examples: list[dict], num_shards: int, rows: int) -> RankerBatch:
    return RankerBatch(**{name: np.stack([e[name] for e in examples]).reshape(num_shards, rows, *np.shape(value))
                          for name, value in examples[0].items()})
