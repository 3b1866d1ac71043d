"""Periodic validation and ff_jax.retrieval's test reports compute recall with the same code: on the
same embeddings they agree with each other and with a brute-force numpy count."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.evaluate import evaluate_embeddings
from ff_jax.retrieval.recommender import TrainingData
from ff_jax.train.validation import recall_at_ks

KS = (1, 5, 20, 60)  # 60 > the rankable items of a member: the whole corpus


def _case(seed=0, n_members=40, n_items=50, dim=16):
    rng = np.random.default_rng(seed)
    members = rng.normal(size=(n_members, dim)).astype(np.float32)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    targets, engaged, skipped = [], [], []
    for u in range(n_members):
        picked = rng.choice(n_items, size=8, replace=False)
        targets.append(set(picked[: rng.integers(0, 4)].tolist()))  # some members have no target
        engaged.append(set(picked[4:7].tolist()))
        skipped.append({int(picked[7])})  # in the history but not engaged: still ranked
    return members, items, targets, engaged, skipped


def _brute_force(members, items, targets, engaged, k):
    m = members / np.linalg.norm(members, axis=1, keepdims=True)
    c = items / np.linalg.norm(items, axis=1, keepdims=True)
    recalls = []
    for vector, t, skip in zip(m, targets, engaged):
        if t:
            ranked = [i for i in np.argsort(-(c @ vector), kind="stable") if i not in skip][:k]
            recalls.append(len(t & set(ranked)) / len(t))
    return float(np.mean(recalls))


def test_validation_recall_equals_retrieval_recall_and_brute_force():
    members, items, targets, engaged, skipped = _case()
    # Validation: what Validator does, on l2-normalised vectors and corpus positions.
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    validation = recall_at_ks(unit(members), unit(items), targets, KS, engaged)

    # Test reports: ff_jax.retrieval over item ids, the engaged history excluded ("engaged" mode).
    ids = [f"i{j}" for j in range(len(items))]
    users = [f"u{i}" for i in range(len(members))]
    data = TrainingData(ids, pd.DataFrame({"item_id": ids}), users,
                        sp.csr_matrix((len(users), len(ids)), dtype=np.float32))
    evaluated = [EvalMember(users[u], [ids[j] for j in sorted(engaged[u])] + [ids[j] for j in skipped[u]],
                            [True] * len(engaged[u]) + [False] * len(skipped[u]), [ids[j] for j in sorted(targets[u])],
                            "established") for u in range(len(users)) if targets[u]]
    report = evaluate_embeddings(users, members, items, evaluated, data, ks=(1, 5, 20, 47), serving_k=None,
                                 ann=False, progress=False)["by_dim"][str(items.shape[1])]["metrics"]["all"]

    assert report["users"] == len(evaluated) < len(users)
    for k in KS:
        expected = _brute_force(members, items, targets, engaged, k)
        assert validation[k] == pytest.approx(expected, abs=1e-12)
        if k <= 47:  # 50 items less 3 excluded: retrieval refuses a K past the rankable items
            assert report[f"recall@{k}"] == pytest.approx(validation[k], abs=1e-12)
    assert validation[60] == pytest.approx(report["recall@47"], abs=1e-12) == pytest.approx(1.0)


def test_validation_recall_of_members_without_targets_is_zero():
    rng = np.random.default_rng(1)
    recalls = recall_at_ks(rng.normal(size=(3, 4)), rng.normal(size=(9, 4)), [set(), set(), set()], (1, 5))
    assert recalls == {1: 0.0, 5: 0.0}
