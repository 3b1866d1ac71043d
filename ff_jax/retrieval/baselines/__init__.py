"""Baselines on the same splits and metric code as the dual encoder (see ff_jax.retrieval.recommender).

Text-free: RandomScores, Popularity, ItemKNN, ALS and BPR through the `implicit` library, and
SASRec (sequential, ours in JAX).
Text: BM25, MiniLM (zero-shot sentence embedder), and the untuned backbone
(ff_jax.retrieval.baselines.backbone, which needs the embed job).
`select_on_validation` chooses a baseline's hyper-parameters on the validation split.
Modules are imported lazily so that `Popularity` does not import torch or transformers.
"""

import importlib

_WHERE = {"RandomScores": "simple", "Popularity": "simple", "ItemKNN": "itemknn", "ALS": "als", "BPR": "bpr",
          "SASRec": "sasrec", "BM25": "bm25", "MiniLM": "minilm", "BackboneZeroShot": "backbone",
          "select_on_validation": "select"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
