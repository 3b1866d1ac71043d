"""A gin-configurable in-memory data source for subprocess tests of `ff-jax train`: real grain
pipeline (so the iterator state is grain's), no TFDS preparation. Import it from a gin file with
`import toy_data` (PYTHONPATH must hold tests/train)."""

import dataclasses

import gin
import numpy as np

from ff_jax.data.pipeline import BatchConfig, train_batches
from ff_jax.data.prompts import PromptFormat

FMT = PromptFormat(markers=("<item>", "</item>", "<text>", "</text>"), item_last_field="<text>",
                   item_closing="</text></item>")
WORDS = "graph rust hiring payroll kernels vaccines lending chips ads cloud".split()


def _item(i: int) -> str:
    return "<item><text>" + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 4)) + "</text></item>"


def toy_records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for u in range(n):
        positive, negative = (int(x) for x in rng.integers(0, 50, 2))
        records.append({"user_id": f"u{u}", "member_prefix": "M:", "member_profile": [WORDS[u % 10]],
                        "member_history": [_item(positive + 1)], "member_suffix": "",
                        "positive_id": f"i{positive}", "positive_prompt": _item(positive),
                        "negative_ids": [f"i{negative}"], "negative_prompts": [_item(negative)]})
    return records


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ToyData:
    num_records: int = 48
    seed: int = 0
    tokenizer: str = "byte"
    batch: BatchConfig = BatchConfig(examples_per_shard=2, length=48, member_budget=48, item_budget=32,
                                     num_hard_negatives=1, member_rows=2, item_rows=2, max_segments=3)

    def prompt_format(self) -> PromptFormat:
        return FMT

    @property
    def segments(self) -> tuple[int, int]:
        return self.batch.max_segments, self.batch.max_segments

    def train_iterator(self, tokenizer, num_shards: int):
        return iter(train_batches(toy_records(self.num_records, self.seed), tokenizer, FMT, self.batch,
                                  seed=self.seed, num_shards=num_shards, read_threads=1))

    def validation(self, tokenizer, num_shards: int):
        return None
