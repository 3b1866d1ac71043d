"""What the server computes, without HTTP: member prompts -> member tower -> filtered retrieval, and
fresh items -> item tower -> log -> index.

Prompts are padded to a few fixed shapes (batch sizes a power of two up to ServerConfig.max_batch,
lengths from ServerConfig.length_buckets up to the token budget), so `warm_up` can compile every
shape that will be served before the server says it is ready. All model and index work runs in
one worker thread (the server's executor): batches never interleave, and fresh items become
visible between two batches. Replicas sharing one items log (same host) see each other's fresh
items: every batch first indexes what the log gained since the last one (`sync`).

With a ranker in the bundle, the batch's member contexts are prefilled in one call dispatched
right after the member tower and before retrieval; JAX returns at once, so the prefill computes
while the host runs the filtered search (ServerConfig.overlap_prefill=False waits for it first, to
measure the overlap). The retrieved candidates of every member are then scored together against
those caches (ff_jax.serving.ranker) and returned in ranker order, with both scores. Without a
ranker the retrieval order stands and `ranker_score` is None.
"""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from ff_jax.retrieval.filters import filtered_search
from ff_jax.serving.api import ServerConfig
from ff_jax.serving.bundle import TOWERS, load_bundle
from ff_jax.serving.items_log import ItemLog, ItemLogError
from ff_jax.serving.metrics import ServingMetrics
from ff_jax.serving.prompting import FieldError, RankerPrompts, ServingPrompts, padded
from ff_jax.serving.ranker import ServedRanker


class ConflictError(ValueError):
    """A fresh item reuses an id the catalogue already holds; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass
class Query:
    """One recommendation request, its member prompt already tokenised."""

    tokens: np.ndarray
    k: int
    exclude: list[str]
    blocked_authors: list[str]
    context: Optional[np.ndarray] = None  # the ranker's context, when the bundle has a ranker


def bucket(value: int, sizes: Sequence[int]) -> int:
    """The first of the ascending `sizes` that holds `value`."""
    for size in sizes:
        if value <= size:
            return size
    raise ValueError(f"{value} exceeds the largest served size {sizes[-1]}")


class Engine:
    def __init__(self, bundle_dir: str | Path, state_dir: str | Path, config: ServerConfig,
                 metrics: Optional[ServingMetrics] = None):
        self.config, self.metrics = config, metrics or ServingMetrics()
        self.bundle = load_bundle(bundle_dir)
        self.prompts = ServingPrompts(self.bundle.prompts, self.bundle.tokenizer)
        self.index = self.bundle.index
        catalogue = self.bundle.catalogue
        self.prompt_of: dict[str, str] = dict(zip(catalogue["item_id"], catalogue["prompt"]))
        self.author_of: dict[str, str] = {i: a for i, a in zip(catalogue["item_id"], catalogue["author"])
                                          if isinstance(a, str)}
        self.log = ItemLog(Path(state_dir) / config.log_file)
        self.log.check()  # a corrupt log is refused now, naming its line, not found by warm-up
        self.towers = {tower: jax.jit(self.bundle.functions[tower].call) for tower in TOWERS}
        self.batch_sizes = sorted({1 << i for i in range(config.max_batch.bit_length()) if 1 << i <= config.max_batch}
                                  | {config.max_batch})
        budgets = {"member": self.prompts.member_tokens, "item": self.prompts.item_tokens}
        self.lengths = {tower: sorted({b for b in config.length_buckets if b < budget} | {budget})
                        for tower, budget in budgets.items()}
        self.ranker, self.ranker_prompts, self.candidates, self.retrieval_weight = None, None, {}, 0.0
        if self.bundle.ranker is not None:
            document = self.bundle.ranker["document"]
            self.ranker = ServedRanker(self.bundle.ranker["functions"], self.bundle.ranker["weights"], document,
                                       config.ranker_batch)
            self.ranker_prompts = RankerPrompts(self.prompts, document)
            self.retrieval_weight = float(document.get("retrieval_weight", 0.0))  # bundles before it: 0
            budget = document["context_budget"]
            self.lengths["context"] = sorted({b for b in config.length_buckets if b < budget} | {budget})
        self.ready = False
        self.metrics.index_size.set(self.index.count)

    def shapes(self) -> list[tuple[str, int, int]]:
        """(step, batch, length) of every shape served: the towers', and the ranker's prefill batch
        and context widths (its score rows always come `ServedRanker.rows` at a time)."""
        shapes = [(t, b, n) for t in TOWERS for b in self.batch_sizes for n in self.lengths[t]]
        if self.ranker is not None:
            shapes += [("ranker", b, n) for b in self.batch_sizes for n in self.lengths["context"]]
        return shapes

    def start(self) -> None:
        """Compiles every served shape, then replays the fresh-items log; ready afterwards."""
        for step, batch, length in self.shapes():
            if step == "ranker":
                self.ranker.score(self.ranker.start([[1] * length], batch, length), [[[1]]])
                continue
            ones = np.ones((batch, length), np.int32)
            np.asarray(self.towers[step](self.bundle.weights, ones, ones))
        self._replay()
        self.ready = True

    # -- towers --------------------------------------------------------------------------------

    def embed(self, tower: str, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """Unit vectors [len(token_ids), E], in chunks of max_batch padded to the served shapes."""
        out = []
        started = time.perf_counter()
        for start in range(0, len(token_ids), self.config.max_batch):
            chunk = list(token_ids[start:start + self.config.max_batch])
            rows = bucket(len(chunk), self.batch_sizes)
            length = bucket(max(len(t) for t in chunk), self.lengths[tower])
            chunk += [chunk[0]] * (rows - len(chunk))  # filler rows: computed, then dropped
            tokens, segments = padded(chunk, length, self.bundle.tokenizer.pad_id)
            out.append(np.asarray(self.towers[tower](self.bundle.weights, tokens, segments))[: rows])
        self.metrics.compute_seconds.labels(f"{tower}_tower").observe(time.perf_counter() - started)
        vectors = np.concatenate(out) if out else np.zeros((0, self.bundle.embedding_dim), np.float32)
        return vectors[: len(token_ids)]

    # -- requests ------------------------------------------------------------------------------

    def refusal(self, query: Query) -> Optional[FieldError]:
        """What retrieval cannot answer for `query`, naming the field (checked after `sync`, so the
        items other replicas added count)."""
        if query.k > self.index.count:
            return FieldError("k", f"{query.k} is more than the catalogue holds ({self.index.count} items)")
        for i, item_id in enumerate(query.exclude):
            if item_id not in self.prompt_of:
                return FieldError(f"exclude_items[{i}]", f"unknown item {item_id!r}")
        return None

    def recommend(self, queries: Sequence[Query]) -> list[Any]:
        """One micro-batch: [(item id, retrieval score, ranker score, author)] per query, or the
        error of that query."""
        self.sync()
        results: list[Any] = [self.refusal(q) for q in queries]
        valid = [i for i, refused in enumerate(results) if refused is None]
        if not valid:
            return results
        vectors = self.embed("member", [queries[i].tokens for i in valid])
        pending = None
        if self.ranker is not None:  # one prefill for the batch, dispatched now, computed while retrieval runs
            contexts = [queries[i].context for i in valid]
            width = bucket(max(len(c) for c in contexts), self.lengths["context"])
            pending = self.ranker.start(contexts, bucket(len(valid), self.batch_sizes), width)
            if not self.config.overlap_prefill:
                jax.block_until_ready(pending.cache)
        started = time.perf_counter()
        k = max(queries[i].k for i in valid)  # a filtered top-k is the prefix of the filtered top-K, K >= k
        scores, ids = filtered_search(self.index, vectors, k, seen=[queries[i].exclude for i in valid],
                                      blocked_authors=[queries[i].blocked_authors for i in valid],
                                      item_authors=self.author_of)
        self.metrics.compute_seconds.labels("retrieval").observe(time.perf_counter() - started)
        found = [[(str(j), float(s)) for j, s in zip(row_ids[: queries[i].k], row_scores[: queries[i].k])
                  if np.isfinite(s)] for i, row_scores, row_ids in zip(valid, scores, ids)]
        ranker_scores = [None] * len(valid)
        if pending is not None:
            started = time.perf_counter()
            ranker_scores = self.ranker.score(pending, [[self._candidate(j) for j, _ in own] for own in found])
            self.metrics.compute_seconds.labels("ranker").observe(time.perf_counter() - started)
        for i, own, own_scores in zip(valid, found, ranker_scores):
            ranked = [(j, s, None) for j, s in own]
            if own_scores is not None:
                fused = own_scores + self.retrieval_weight * np.asarray([s for _, s in own])
                order = np.argsort(-fused, kind="stable")
                ranked = [(own[o][0], own[o][1], float(own_scores[o])) for o in order]
            results[i] = [(j, s, r, self.author_of.get(j)) for j, s, r in ranked]
        return results

    def _candidate(self, item_id: str) -> list[int]:
        """The ranker's candidate tokens of a catalogue item (computed once)."""
        if item_id not in self.candidates:
            self.candidates[item_id] = self.ranker_prompts.candidate(self.prompt_of[item_id])
        return self.candidates[item_id]

    def check_item_prompts(self, prompts: Sequence[str]) -> None:
        """Refuses an item prompt the towers (or the ranker) cannot take, naming the item: only its
        main text may be cut, so fields before it that overrun the budget are an error."""
        for i, prompt in enumerate(prompts):
            try:
                self.prompts.item_token_ids([prompt])
                if self.ranker_prompts is not None:
                    self.ranker_prompts.candidate(prompt)
            except ValueError as err:
                raise FieldError(f"items[{i}].fields", str(err)) from None

    def add_items(self, items: Sequence[dict[str, Any]]) -> int:
        """Embeds `items` ({item_id, prompt, author, created_at}), logs them durably, then indexes
        them; returns the index size. Under the log's lock, after taking in what other replicas
        logged, so an id is accepted once across every replica sharing the log."""
        with self.log.locked():
            self.sync()
            seen = set()
            for i, item in enumerate(items):
                if item["item_id"] in self.prompt_of or item["item_id"] in seen:
                    raise ConflictError(f"items[{i}].item_id", f"{item['item_id']!r} is already in the catalogue"
                                        if item["item_id"] in self.prompt_of else f"{item['item_id']!r} is repeated")
                seen.add(item["item_id"])
            vectors = self.embed("item", self.prompts.item_token_ids([item["prompt"] for item in items]))
            self.log.append(list(items))  # durable before visible, and before the acknowledgement
        self._index(items, vectors)
        return self.index.count

    def sync(self) -> None:
        """Indexes the items other replicas sharing the log have added since the last look."""
        self._index_records(self.log.read_new())

    def _index_records(self, records: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(records), 256):
            chunk = records[start:start + 256]
            self._index(chunk, self.embed("item", self.prompts.item_token_ids([r["prompt"] for r in chunk])))

    def _index(self, items: Sequence[dict[str, Any]], vectors: np.ndarray) -> None:
        self.index.add(vectors, np.asarray([item["item_id"] for item in items]))
        for item in items:
            self.prompt_of[item["item_id"]] = item["prompt"]
            if item.get("author"):
                self.author_of[item["item_id"]] = item["author"]
        self.metrics.index_size.set(self.index.count)

    def _replay(self) -> None:
        records = self.log.replay()
        clash = next((r["item_id"] for r in records if r["item_id"] in self.prompt_of), None)
        if clash is not None:
            raise ItemLogError(f"{self.log.path}: item {clash!r} is also in the bundle's catalogue (a log of "
                               "another bundle?)")
        self._index_records(records)

    def close(self) -> None:
        self.log.close()
