"""The pretrained backbone without fine-tuning: what the dual encoder starts from.

The same path as a trained model, minus the checkpoint: the embed job (zero_shot) runs the
pretrained LLaMA-architecture model (default: SmolLM2-135M from its GGUF) over the dataset's own
member and item prompts — the ones training uses, prompt markers added to the vocabulary at the
mean embedding — mean-pools the last hidden layer, and members are scored by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.recommender import EmbeddingRecommender, Recommender, TrainingData, corpus_order


def zero_shot_run(data, workdir: str | Path, pretrained: str | Path | None = None, overrides: dict | None = None):
    """The untuned pretrained model as a run in `workdir`: nothing trained, embedded zero-shot."""
    from ff_jax import assets
    from ff_jax.train.dual_encoder import EncoderConfig
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.run import DUAL_ENCODER, Run, RunSpec

    return Run(workdir, RunSpec(DUAL_ENCODER, data, pretrained=str(pretrained or assets.smollm2_gguf()),
                                model_overrides={"scan_layers": True, **(overrides or {})},
                                encoder=EncoderConfig(pooling="mean"), loss=InfoNCE()))


class BackboneZeroShot(Recommender):
    """Embeds `data` (a FeedData of the evaluated dataset, tokenizer "checkpoint") into `workdir`
    with the untuned backbone at fit time (resumable: a rerun reuses finished shards)."""

    name = "backbone zero-shot"

    def __init__(self, data, workdir: str | Path, split: str = "test", pretrained: str | Path | None = None,
                 overrides: dict | None = None, progress: bool = True):
        self.feed, self.workdir, self.split = data, Path(workdir), split
        self.pretrained, self.overrides, self.progress = pretrained, overrides, progress

    def fit(self, data: TrainingData) -> BackboneZeroShot:
        from ff_jax.retrieval.embed_job import EmbedConfig, embed_towers
        from ff_jax.retrieval.embedding_store import read_tower

        super().fit(data)
        config = EmbedConfig(split=self.split, zero_shot=True)
        run = zero_shot_run(self.feed, self.workdir, self.pretrained, self.overrides)
        folders = embed_towers(run, config, self.progress)
        item_ids, items = read_tower(folders["item"])
        member_ids, members = read_tower(folders["member"])
        items = corpus_order(item_ids, items, data.corpus_ids, str(folders["item"]))
        self.inner = EmbeddingRecommender(member_ids.tolist(), members, items, name=self.name).fit(data)
        return self

    def score(self, members: Sequence[EvalMember]) -> np.ndarray:
        return self.inner.score(members)
