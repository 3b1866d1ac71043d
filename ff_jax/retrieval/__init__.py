"""Retrieval: nearest-neighbour indexes (exact on the accelerator, ScaNN), filters and metrics.

    from ff_jax.retrieval import ScannIndex, ExactIndex, load_index
    index = ScannIndex().build(item_embeddings, item_ids)
    scores, ids = index.search(member_embeddings, k=2000, exclude=seen_item_ids)
    index.save("runs/x/index"); index = load_index("runs/x/index")
"""

from ff_jax.retrieval.exact import ExactConfig, ExactIndex
from ff_jax.retrieval.filters import filtered_search
from ff_jax.retrieval.index import Index, IndexFormatError, create_index, load_index
from ff_jax.retrieval.scann_index import ScannConfig, ScannIndex

__all__ = [
    "ExactConfig",
    "ExactIndex",
    "Index",
    "IndexFormatError",
    "ScannConfig",
    "ScannIndex",
    "create_index",
    "filtered_search",
    "load_index",
]
