"""Each loss against a plain numpy reference written row by row (no shared code with ff_jax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff_jax.train.losses import BCE, InfoNCE, MatryoshkaInfoNCE, Towers, matryoshka_dims


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _random_towers(seed=0, batch=6, hard=2, dim=16, fillers=1):
    rng = np.random.default_rng(seed)
    member = rng.normal(size=(batch, dim))
    positive = member + 2.0 * rng.normal(size=(batch, dim))  # correlated, so losses are not all alike
    negatives = rng.normal(size=(batch, hard, dim))
    negative_mask = rng.random((batch, hard)) > 0.3
    example_mask = np.ones(batch, np.float32)
    example_mask[batch - fillers:] = 0
    return member, positive, negatives, negative_mask, example_mask


def _as_towers(arrays, keys=None):
    member, positive, negatives, negative_mask, example_mask = arrays
    positive_key, negative_key = (None, None) if keys is None else map(jnp.asarray, keys)
    return Towers(jnp.asarray(member, jnp.float32), jnp.asarray(positive, jnp.float32),
                  jnp.asarray(negatives, jnp.float32), jnp.asarray(negative_mask), jnp.asarray(example_mask),
                  positive_key, negative_key)


def _candidates(b, arrays, shared, keys=None):
    """Row b's candidate vectors (normalised), positive first, as a plain list.

    With item keys, a candidate that is the same item as row b's positive is left out.
    """
    member, positive, negatives, negative_mask, example_mask = arrays
    p, n = _normalise(positive), _normalise(negatives)
    pk, nk = keys if keys is not None else (np.arange(len(p)) + 1000, -np.ones(negatives.shape[:2]))
    out = [p[b]]
    out += [p[j] for j in range(len(p)) if j != b and example_mask[j] > 0 and pk[j] != pk[b]]
    rows = range(len(p)) if shared else [b]
    out += [n[j, h] for j in rows for h in range(n.shape[1])
            if negative_mask[j, h] and example_mask[j] > 0 and nk[j, h] != pk[b]]
    return np.stack(out)


def numpy_info_nce(arrays, temperature, shared, dims=None, keys=None):
    member, positive, negatives, negative_mask, example_mask = arrays
    losses = []
    for b in np.flatnonzero(example_mask):
        cand = _candidates(b, arrays, shared, keys)
        total = 0.0
        for dim in dims or [member.shape[1]]:
            q = _normalise(member[b, :dim])
            c = _normalise(cand[:, :dim])
            logits = c @ q / temperature
            total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0]
        losses.append(total)
    return float(np.mean(losses))


def numpy_bce(arrays, temperature, bias, shared, keys=None):
    member, *_ , example_mask = arrays
    losses = []
    for b in np.flatnonzero(example_mask):
        cand = _candidates(b, arrays, shared, keys)
        z = cand @ _normalise(member[b]) / temperature + bias
        labels = np.zeros(len(z))
        labels[0] = 1
        prob = 1 / (1 + np.exp(-z))
        losses.append(-np.sum(labels * np.log(prob) + (1 - labels) * np.log(1 - prob)))
    return float(np.mean(losses))


def _run(loss_fn, arrays, temperature, bias=0.0, keys=None):
    """One compiled call (eager op-by-op dispatch is slower than compiling the whole loss)."""
    return jax.jit(loss_fn)(_as_towers(arrays, keys), _log_scale(temperature), jnp.asarray(bias, jnp.float32))


def _log_scale(t):
    return jnp.asarray(-np.log(t), jnp.float32)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("hard", [0, 1, 2])
def test_info_nce_matches_numpy(shared, hard):
    arrays = _random_towers(seed=hard, hard=hard)
    loss, metrics = _run(InfoNCE(temperature=0.1, share_hard_negatives=shared), arrays, 0.1)
    np.testing.assert_allclose(float(loss), numpy_info_nce(arrays, 0.1, shared), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["temperature"]), 0.1, rtol=1e-6)


def test_info_nce_accuracy_counts_rows_whose_positive_scores_highest():
    member, positive, negatives, negative_mask, example_mask = _random_towers(hard=0, fillers=0)
    arrays = (member, member.copy(), negatives, negative_mask, example_mask)  # positive == member
    _, metrics = _run(InfoNCE(), arrays, 0.05)
    assert float(metrics["in_batch_accuracy"]) == 1.0
    np.testing.assert_allclose(float(metrics["positive_cosine"]), 1.0, rtol=1e-5, atol=1e-6)


def test_filler_examples_change_nothing():
    arrays = _random_towers(fillers=0, batch=5)
    member, positive, negatives, negative_mask, example_mask = arrays
    rng = np.random.default_rng(9)
    padded = (np.concatenate([member, rng.normal(size=(2, 16))]), np.concatenate([positive, rng.normal(size=(2, 16))]),
              np.concatenate([negatives, rng.normal(size=(2, 2, 16))]),
              np.concatenate([negative_mask, np.ones((2, 2), bool)]), np.concatenate([example_mask, np.zeros(2)]))
    for loss_fn in (InfoNCE(), BCE(), MatryoshkaInfoNCE()):
        a = _run(loss_fn, arrays, 0.07, -3.0)[0]
        b = _run(loss_fn, padded, 0.07, -3.0)[0]
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [True, False])
def test_bce_matches_numpy(shared):
    arrays = _random_towers(seed=3, hard=2)
    loss, _ = _run(BCE(share_hard_negatives=shared), arrays, 0.1, -4.0)
    np.testing.assert_allclose(float(loss), numpy_bce(arrays, 0.1, -4.0, shared), rtol=1e-5, atol=1e-6)


def test_matryoshka_is_weighted_sum_over_nested_prefixes():
    arrays = _random_towers(seed=5, hard=1, dim=32)
    assert matryoshka_dims(32) == (32, 16, 8, 4)
    loss, metrics = _run(MatryoshkaInfoNCE(temperature=0.05), arrays, 0.05)
    np.testing.assert_allclose(float(loss), numpy_info_nce(arrays, 0.05, True, dims=[32, 16, 8, 4]), rtol=1e-5, atol=1e-6)
    weighted, _ = _run(MatryoshkaInfoNCE(dims=(32, 8), weights=(1.0, 0.5)), arrays, 0.05)
    expected = (numpy_info_nce(arrays, 0.05, True, dims=[32]) + 0.5 * numpy_info_nce(arrays, 0.05, True, dims=[8]))
    np.testing.assert_allclose(float(weighted), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["loss_dim8"]), numpy_info_nce(arrays, 0.05, True, dims=[8]), rtol=1e-5, atol=1e-6)


def test_matryoshka_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="weights"):
        _run(MatryoshkaInfoNCE(dims=(16, 8), weights=(1.0,)), _random_towers(), 0.05)


@pytest.mark.parametrize("shared", [True, False])
def test_duplicate_items_are_not_negatives_of_each_other(shared):
    arrays = _random_towers(seed=7, hard=2, fillers=0)
    # Examples 0 and 3 engaged with the same item; example 1's first hard negative is that item too,
    # and example 2's hard negative is its own positive.
    positive_key = np.array([5, 6, 7, 5, 8, 9], np.int32)
    negative_key = np.array([[11, 12], [5, 13], [7, 14], [15, 16], [17, 18], [19, 20]], np.int32)
    keys = (positive_key, negative_key)
    loss, _ = _run(InfoNCE(temperature=0.1, share_hard_negatives=shared), arrays, 0.1, keys=keys)
    expected = numpy_info_nce(arrays, 0.1, shared, keys=keys)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-6)
    assert abs(expected - numpy_info_nce(arrays, 0.1, shared)) > 1e-3  # the masking matters here
    bce, _ = _run(BCE(share_hard_negatives=shared), arrays, 0.1, -4.0, keys=keys)
    np.testing.assert_allclose(float(bce), numpy_bce(arrays, 0.1, -4.0, shared, keys=keys), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared", [True, False])
def test_info_nce_logq_correction_against_numpy(shared):
    """Each candidate's logit loses its own log q (positive, in-batch positives and hard negatives alike)."""
    arrays = _random_towers(seed=4)
    member, positive, negatives, negative_mask, example_mask = arrays
    rng = np.random.default_rng(5)
    positive_log_q = np.log(rng.dirichlet(np.ones(len(positive))))
    negative_log_q = np.log(rng.uniform(1e-4, 0.1, negatives.shape[:2]))
    towers = _as_towers(arrays).replace(positive_log_q=jnp.asarray(positive_log_q, jnp.float32),
                                        negative_log_q=jnp.asarray(negative_log_q, jnp.float32))
    temperature = 0.07
    expected = []
    for b in np.flatnonzero(example_mask):
        q = _normalise(member[b])
        cands = [(positive[b], positive_log_q[b])]
        cands += [(positive[j], positive_log_q[j]) for j in range(len(positive)) if j != b and example_mask[j] > 0]
        rows = range(len(positive)) if shared else [b]
        cands += [(negatives[j, h], negative_log_q[j, h]) for j in rows for h in range(negatives.shape[1])
                  if negative_mask[j, h] and example_mask[j] > 0]
        logits = np.array([_normalise(c) @ q / temperature - lq for c, lq in cands])
        expected.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0])
    loss_fn = InfoNCE(temperature=temperature, share_hard_negatives=shared, logq_correction=True)
    loss, _ = loss_fn(towers, jnp.log(1 / temperature), jnp.zeros(()))
    np.testing.assert_allclose(float(loss), np.mean(expected), rtol=1e-5)
    plain, _ = InfoNCE(temperature=temperature, share_hard_negatives=shared)(towers, jnp.log(1 / temperature),
                                                                             jnp.zeros(()))
    assert abs(float(plain) - float(loss)) > 1e-3  # the correction changes the loss


def test_logq_correction_without_sampling_probabilities_is_refused():
    towers = _as_towers(_random_towers())
    with pytest.raises(ValueError, match="positive_log_q"):
        InfoNCE(logq_correction=True)(towers, jnp.log(20.0), jnp.zeros(()))
