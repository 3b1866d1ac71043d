"""The ranker's losses against numpy written from their definitions, member by member."""

import numpy as np

from ff_jax.rank.losses import ListwiseSoftmax, PointwiseBCE

RNG = np.random.default_rng(0)
SCORES = RNG.normal(size=(5, 6)).astype(np.float32) * 3
LABELS = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0],
                   [1, 0, 0, 0, 0, 0]], np.float32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0],
                 [1, 1, 1, 1, 1, 1]], np.float32)
EXAMPLES = np.array([1, 1, 1, 1, 0], np.float32)  # the last member is a filler


def test_listwise_softmax_matches_numpy():
    losses, firsts = [], []
    for s, y, m, e in zip(SCORES, LABELS, MASK, EXAMPLES):
        real = m > 0
        if not e or not y[real].any():
            continue  # fillers and members without an engaged candidate carry no listwise signal
        log_p = s[real] - np.log(np.sum(np.exp(s[real].astype(np.float64))))
        losses.append(-np.sum(log_p[y[real] > 0]) / y[real].sum())
        firsts.append(y[real][np.argmax(s[real])])
    loss, metrics = ListwiseSoftmax()(SCORES, LABELS, MASK, EXAMPLES)
    np.testing.assert_allclose(float(loss), np.mean(losses), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["top1_accuracy"]), np.mean(firsts), rtol=1e-6)


def test_pointwise_bce_matches_numpy():
    total, count = 0.0, 0
    for s, y, m, e in zip(SCORES.astype(np.float64), LABELS, MASK, EXAMPLES):
        for score, label, real in zip(s, y, m):
            if real and e:
                p = 1 / (1 + np.exp(-score))
                total += -(label * np.log(p) + (1 - label) * np.log(1 - p))
                count += 1
    loss, _ = PointwiseBCE()(SCORES, LABELS, MASK, EXAMPLES)
    np.testing.assert_allclose(float(loss), total / count, rtol=1e-5)


def test_masked_candidates_do_not_move_the_loss():
    """Whatever a padded slot scores, neither loss changes."""
    noisy = np.where(MASK > 0, SCORES, 1e4 * RNG.normal(size=SCORES.shape)).astype(np.float32)
    for loss in (ListwiseSoftmax(), PointwiseBCE()):
        np.testing.assert_allclose(float(loss(noisy, LABELS, MASK, EXAMPLES)[0]),
                                   float(loss(SCORES, LABELS, MASK, EXAMPLES)[0]), rtol=1e-6)
