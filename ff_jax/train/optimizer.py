"""AdamW with linear warm-up and cosine decay, global-norm clipping and gradient accumulation.

Which parameters train: every nnx.Param (backbone, projection head, learned temperature) — or,
when the backbone has LoRA adapters (`lora_rank > 0`), only the adapters (nnx.LoRAParam) and the
dual encoder's own head parameters (HeadParam), so a 3B/8B backbone stays frozen and its
optimiser state is never allocated.
"""

import dataclasses

import gin
import jax
import optax
from flax import nnx

from ff_jax.train.dual_encoder import HeadParam


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """learning_rate peaks after warmup_steps, then decays by a cosine to
    learning_rate * final_lr_ratio at total_steps. Weight decay skips vectors and scalars
    (norm scales, biases, temperature). accumulation_steps > 1 sums gradients over that many
    consecutive batches before one update (each batch still has its own in-batch negatives)."""

    learning_rate: float = 1e-4
    warmup_steps: int = 100
    total_steps: int = 10_000
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    accumulation_steps: int = 1

    def __post_init__(self):
        if self.accumulation_steps < 1:
            raise ValueError(f"OptimizerConfig.accumulation_steps must be >= 1, got {self.accumulation_steps}")
        if self.total_steps < 1:  # said first: else it reads as a warm-up problem
            raise ValueError(f"OptimizerConfig.total_steps must be >= 1 (runs/train.gin sets it to the STEPS macro), "
                             f"got {self.total_steps}")
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"OptimizerConfig.warmup_steps ({self.warmup_steps}) must be below "
                             f"total_steps ({self.total_steps})")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    # Counted in optimiser updates, i.e. after accumulation.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps, end_value=cfg.learning_rate * cfg.final_lr_ratio)


def _decay_mask(params):
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=_decay_mask),
    )
    if cfg.accumulation_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulation_steps)
    return tx


def trainable_filter(lora_rank: int):
    """The nnx filter selecting what the optimiser updates."""
    return nnx.Any(nnx.LoRAParam, HeadParam) if lora_rank > 0 else nnx.Param
