"""feed_world with compact prompts and a word-level tokenizer: a dual encoder that trains on a CPU.

Items show their author's industry and a view-count bucket; members their headline and the
industries of their four most recent engagements. A 2-layer model learns topic matching from
that in a couple of CPU-minutes, which is what `make demo` and the recall test need; real runs
use the full prompts and the checkpoint's own tokenizer. The run itself (model, batch shapes,
optimiser) is configs/experiments/compact_feed_world.gin.
"""

import dataclasses
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ff_jax.data import prepared
from ff_jax.data.prompts import PromptTemplate

CONFIG_NAME = "tiny_compact"

COMPACT = PromptTemplate(system_prompt="", member_fields=("headline",),
                         item_fields=("author_industry", "view_count"), history_fields=("author_industry",),
                         max_history_items=4, item_text_chars=160, history_text_chars=120, timestamps="omit")


def fit_word_tokenizer(texts, path: Path, vocab_size: int = 380) -> str:
    """A WordLevel tokenizer fitted on `texts`, saved as an HF tokenizer.json (load_tokenizer reads it)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "<s>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))
    return str(path)


def prepare(data_dir: Path) -> tuple[list[str], str]:
    """Builds feed_world "tiny_compact" (+ its corpus) under data_dir; returns (item prompts, tokenizer path)."""
    data_dir = Path(data_dir)
    base = {c.name: c for c in prepared.FeedWorld.BUILDER_CONFIGS}["tiny"]
    config = dataclasses.replace(base, name=CONFIG_NAME, template=COMPACT)
    for name in ("feed_world", "feed_world_corpus"):
        prepared.build(name, config, data_dir)
    corpus = prepared.open_prepared(data_dir, "feed_world_corpus", CONFIG_NAME)[0]["corpus"]
    prompts = [corpus[i]["item_prompt"] for i in range(len(corpus))]
    return prompts, fit_word_tokenizer(prompts, data_dir / "tokenizer.json")
