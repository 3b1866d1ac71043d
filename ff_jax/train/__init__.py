"""Dual-encoder training: DualEncoder (dual_encoder), gin-registered losses (losses), optimiser
(optimizer), pure jitted steps (step), orbax checkpoints (checkpointing), metrics (metrics_log),
a run's files (layout) and the run as an object (run), the one training loop (trainer), periodic
validation (validation), PCA cut (pca) and the `train` entry point (loop)."""
