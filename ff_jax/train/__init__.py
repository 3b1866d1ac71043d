"""Dual-encoder training: DualEncoder (dual_encoder), gin-registered losses (losses), optimiser
(optimizer), pure jitted steps (step), orbax checkpoints (checkpointing), metrics (metrics_log),
a run's files (layout) and the run as an object (run), the one training loop (trainer), periodic
validation (validation), PCA cut (pca) and the `train` entry point (loop)."""

# A run's config.gin binds `train`: importing any part of the package registers it, so
# `Run.open` works from a notebook that imported only ff_jax.train.run.
from ff_jax.train import loop  # noqa: E402,F401
