"""A word-level tokenizer fitted to a corpus: small vocabularies for CPU-sized experiments.

A 2-layer model trained from scratch on a laptop learns far faster over whole words than over
bytes or a 128k BPE vocabulary; real runs use the checkpoint's own tokenizer instead.
"""

from pathlib import Path
from typing import Iterable


def fit_word_tokenizer(texts: Iterable[str], path: Path, vocab_size: int = 380) -> str:
    """Fits on `texts`, saves an HF tokenizer.json at `path` (loadable by load_tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "<s>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))
    return str(path)
