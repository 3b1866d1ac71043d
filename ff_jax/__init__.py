"""ff_jax: a LLaMA-3 feed recommender in JAX."""
