"""Member-by-member comparison of two rankings (ff_jax.retrieval.paired) against hand loops."""

from types import SimpleNamespace

import numpy as np
import pytest

from ff_jax.retrieval.paired import compare_rankings, paired_change, per_member


def _members(rng, count: int, corpus: int):
    members = [SimpleNamespace(targets=[int(t) for t in rng.choice(corpus, rng.integers(1, 4), replace=False)])
               for _ in range(count)]
    return members + [SimpleNamespace(targets=[])]  # no target: left out, as in evaluation


DATA = SimpleNamespace(positions=lambda targets: list(targets))


def normal_interval(change: np.ndarray) -> np.ndarray:
    """The 95% normal-approximation interval of a mean, mean -/+ 1.96 standard errors, and the error."""
    error = change.std(ddof=1) / np.sqrt(len(change))
    return np.array([change.mean() - 1.96 * error, change.mean() + 1.96 * error]), error


def _hand(row, targets, metric):
    name, k = metric.split("@")
    k = int(k)
    found = [r for r, item in enumerate(row[:k]) if item in targets]
    if name == "recall":
        return len(found) / len(targets)
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(len(targets), k)))
    return sum(1.0 / np.log2(r + 2) for r in found) / ideal


@pytest.mark.parametrize("metric", ["recall@5", "ndcg@5", "recall@20"])
def test_per_member_values_match_a_hand_loop(metric):
    rng = np.random.default_rng(0)
    members = _members(rng, 50, 30)
    ranked = np.stack([rng.permutation(30)[:20] for _ in members])
    got = per_member(ranked, members, DATA, metric)
    want = [_hand(row, m.targets, metric) for row, m in zip(ranked, members) if m.targets]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_a_change_of_nothing_but_noise_has_an_interval_around_zero_and_a_real_one_does_not():
    rng = np.random.default_rng(1)
    members = _members(rng, 400, 40)
    before = np.stack([rng.permutation(40) for _ in members])
    reshuffled = np.stack([rng.permutation(40) for _ in members])  # as good as `before`, member by member noise
    change = compare_rankings(before, reshuffled, members, DATA, ["recall@10"])["recall@10"]
    hand = np.array([_hand(a, m.targets, "recall@10") - _hand(b, m.targets, "recall@10")
                     for a, b, m in zip(reshuffled, before, members) if m.targets])
    assert change["members"] == 400
    np.testing.assert_allclose(change["mean"], hand.mean(), rtol=1e-12)
    # 400 members: the bootstrap's interval is close to the normal one (BCa and resampling noise
    # move each end by a few hundredths of a standard error here; a 90% interval would be 0.3 off).
    normal, error = normal_interval(hand)
    np.testing.assert_allclose(change["ci95"], normal, atol=0.25 * error)
    assert change["ci95"][0] < 0.0 < change["ci95"][1]
    # Deterministic per seed: the same seed, the same interval; another seed resamples differently.
    again = compare_rankings(before, reshuffled, members, DATA, ["recall@10"])["recall@10"]
    other = compare_rankings(before, reshuffled, members, DATA, ["recall@10"], seed=1)["recall@10"]
    assert again == change and other["ci95"] != change["ci95"] and other["mean"] == change["mean"]
    better = before.copy()
    for i, m in enumerate(members[:200]):  # the first target moved to the top for half the members
        better[i] = [m.targets[0], *[x for x in before[i] if x != m.targets[0]]]
    gain = compare_rankings(before, better, members, DATA, ["recall@10"])["recall@10"]
    hand = np.array([_hand(a, m.targets, "recall@10") - _hand(b, m.targets, "recall@10")
                     for a, b, m in zip(better, before, members) if m.targets])
    normal, error = normal_interval(hand)
    np.testing.assert_allclose(gain["mean"], hand.mean(), rtol=1e-12)
    np.testing.assert_allclose(gain["ci95"], normal, atol=0.25 * error)
    assert 0.0 < gain["ci95"][0] < gain["mean"] < gain["ci95"][1]


def test_identical_rankings_change_nothing_and_different_members_are_refused():
    assert paired_change(np.ones(5), np.ones(5)) == {"mean": 0.0, "ci95": [0.0, 0.0], "members": 5}
    with pytest.raises(ValueError, match="rankings of 3 and 2 members"):
        compare_rankings(np.zeros((3, 4), int), np.zeros((2, 4), int), [], DATA)
