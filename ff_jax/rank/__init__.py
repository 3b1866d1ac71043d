"""The cross-encoder ranker: the same LLaMA scores (member, candidate) pairs, the member's context
prefilled once (docs/ranker.md)."""

# A ranker run's config.gin binds `train_ranker` and `rerank_run`: importing any part of the package
# registers both, so `Run.open` works on a ranker's workdir.
from ff_jax.rank import evaluate, train  # noqa: E402,F401
