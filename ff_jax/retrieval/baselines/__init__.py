"""Baselines on the same splits and metric code as the dual encoder (see ff_jax.retrieval.recommender).

Text-free: RandomScores, Popularity, ItemKNN, ALS and BPR through the `implicit` library, and
SASRec (sequential, ours in JAX).
Text: BM25, MiniLM (zero-shot sentence embedder), and the untuned backbone
(ff_jax.retrieval.baselines.backbone, which needs the embed job).
`select_on_validation` chooses a baseline's hyper-parameters on the validation split.
Heavy libraries (implicit, torch, transformers, jax) are imported inside the methods that use
them, so importing every module here costs tens of milliseconds and `Popularity` never loads them.
"""

from ff_jax.retrieval.baselines.als import ALS
from ff_jax.retrieval.baselines.backbone import BackboneZeroShot
from ff_jax.retrieval.baselines.bm25 import BM25
from ff_jax.retrieval.baselines.bpr import BPR
from ff_jax.retrieval.baselines.itemknn import ItemKNN
from ff_jax.retrieval.baselines.minilm import MiniLM
from ff_jax.retrieval.baselines.sasrec import SASRec
from ff_jax.retrieval.baselines.select import select_on_validation
from ff_jax.retrieval.baselines.simple import Popularity, RandomScores

__all__ = ["ALS", "BM25", "BPR", "BackboneZeroShot", "ItemKNN", "MiniLM", "Popularity", "RandomScores", "SASRec",
           "select_on_validation"]
