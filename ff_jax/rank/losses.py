"""The ranker's losses over each member's candidates, chosen in gin (`train_ranker.loss`).

Both take scores, labels and a candidate mask [M, K] (M members, K candidate slots) and return
(loss, metrics). Members without any engaged candidate carry no listwise signal and are left out
of the listwise loss; fillers (example_mask 0) are left out of both.
"""

import dataclasses

import gin
import jax
import jax.numpy as jnp


def _first_is_positive(scores, labels, mask) -> jax.Array:
    """Per member: 1 when its top-scored real candidate is an engaged one."""
    top = jnp.argmax(jnp.where(mask > 0, scores, -jnp.inf), axis=-1)
    return jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ListwiseSoftmax:
    """Softmax cross-entropy over a member's candidates, against its engaged ones shared evenly:
    -sum_k y_k log softmax(s)_k / sum_k y_k."""

    def __call__(self, scores, labels, mask, example_mask):
        logits = jnp.where(mask > 0, scores, jnp.finfo(jnp.float32).min)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        positives = jnp.sum(labels * mask, axis=-1)
        per_member = -jnp.sum(jnp.where(labels * mask > 0, log_p, 0.0), axis=-1) / jnp.maximum(positives, 1.0)
        weight = example_mask * (positives > 0)
        loss = jnp.sum(per_member * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        top1 = jnp.sum(_first_is_positive(scores, labels, mask) * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        return loss, {"top1_accuracy": top1}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PointwiseBCE:
    """Binary cross-entropy of sigmoid(score) against each candidate's label, averaged over the
    real candidates of real members."""

    def __call__(self, scores, labels, mask, example_mask):
        weight = mask * example_mask[:, None]
        per_candidate = jnp.logaddexp(0.0, scores) - labels * scores  # -log sigmoid(s) or -log(1 - sigmoid(s))
        loss = jnp.sum(per_candidate * weight) / jnp.maximum(jnp.sum(weight), 1.0)
        has_positive = example_mask * (jnp.sum(labels * mask, axis=-1) > 0)
        top1 = (jnp.sum(_first_is_positive(scores, labels, mask) * has_positive)
                / jnp.maximum(jnp.sum(has_positive), 1.0))
        return loss, {"top1_accuracy": top1}
