"""Dual-encoder training: DualEncoder (dual_encoder), gin-registered losses (losses), optimiser
(optimizer), pure jitted steps (step), orbax checkpoints (checkpointing), metrics (metrics_log),
data wiring (data_source), PCA cut (pca) and the `train` entry point (loop)."""
