"""The cross-encoder ranker: the same LLaMA scores (member, candidate) pairs, the member's context
prefilled once (docs/ranker.md)."""
