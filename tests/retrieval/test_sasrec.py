"""SASRec (ff_jax/retrieval/baselines/sasrec.py): one forward pass and its loss against a numpy hand
computation, a planted next item it must rank first, a never-engaged item, the validation choice,
and the time-ordered training events it reads."""

import math

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ff_jax.data.splits import EvalMember
from ff_jax.retrieval.baselines import SASRec, select_on_validation
from ff_jax.retrieval.baselines.sasrec import encode, init_params, next_item_loss, windows
from ff_jax.retrieval.recommender import TrainingData, member_events, training_data


def sequence_data(sequences: list[list[int]], num_items: int) -> TrainingData:
    """TrainingData of users u0, u1, ... engaging with the corpus positions of `sequences` in order."""
    users = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences]).astype(np.int32)
    items = np.concatenate([np.asarray(s, np.int32) for s in sequences])
    ids = [f"i{j}" for j in range(num_items)]
    matrix = sp.csr_matrix((np.ones(len(items), np.float32), (users, items)), shape=(len(sequences), num_items))
    matrix.data[:] = 1.0
    events = pd.DataFrame({"user": users, "item": items, "engaged": np.ones(len(items), bool)})
    return TrainingData(ids, pd.DataFrame({"item_id": ids, "text": ids}), [f"u{u}" for u in range(len(sequences))],
                        matrix, events)


def member(history: list[int], targets=(), engaged=None) -> EvalMember:
    engaged = [True] * len(history) if engaged is None else engaged
    return EvalMember("m", [f"i{j}" for j in history], list(engaged), [f"i{j}" for j in targets], "established")


# ----------------------------------------------------------------------------- hand computation


def reference_hidden(params, items, engaged, heads):
    """The module docstring's model written out with loops: one sequence, float64."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    length, dim = len(items), p["item"].shape[1]
    width = dim // heads

    def ln(x, q):
        return (x - x.mean()) / math.sqrt(x.var() + 1e-6) * q["scale"] + q["bias"]

    x = np.stack([(p["item"][items[t]] + p["pos"][-length:][t] + (0 if engaged[t] else 1) * p["skip"])
                  * (items[t] > 0) for t in range(length)])
    for b in p["blocks"]:
        h = np.stack([ln(x[t], b["ln1"]) for t in range(length)])
        q, k, v = h @ b["q"], h @ b["k"], h @ b["v"]
        attended = np.zeros((length, dim))
        for t in range(length):
            for head in range(heads):
                cols = slice(head * width, (head + 1) * width)
                keys = [s for s in range(t + 1) if items[s] > 0]
                if not keys:  # a padded query sees no key: uniform over all (its output is masked anyway)
                    keys = list(range(length))
                    logits = np.zeros(length)
                else:
                    logits = np.array([q[t, cols] @ k[s, cols] / math.sqrt(width) for s in keys])
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                attended[t, cols] = sum(w * v[s, cols] for w, s in zip(weights, keys))
        x = x + attended @ b["o"]
        h = np.stack([ln(x[t], b["ln2"]) for t in range(length)])
        x = (x + np.maximum(h @ b["w1"] + b["b1"], 0) @ b["w2"] + b["b2"]) * (items > 0)[:, None]
    return np.stack([ln(x[t], p["final_ln"]) for t in range(length)])


def test_forward_pass_and_loss_equal_a_hand_computation():
    num_items, dim, length, heads = 5, 4, 4, 2
    params = init_params(jax.random.PRNGKey(0), num_items, dim, blocks=2, max_len=6)
    rng = np.random.default_rng(0)  # larger weights than the 0.02 init, so every term counts
    params = jax.tree_util.tree_map(lambda a: rng.normal(0, 0.7, a.shape).astype(np.float32), params)
    params["item"][0] = 0.0
    items = np.array([[0, 3, 1, 5], [2, 4, 4, 1]], np.int32)        # item j + 1; 0 = padding
    engaged = np.array([[True, True, False, True], [True, False, True, True]])
    targets = np.array([[0, 1, 5, 2], [4, 0, 1, 3]], np.int32)       # 0 = no loss at that position
    hidden = np.asarray(encode(params, items, engaged, heads))
    nll = []
    for row in range(2):
        expected = reference_hidden(params, items[row], engaged[row], heads)
        valid = items[row] > 0
        np.testing.assert_allclose(hidden[row][valid], expected[valid], rtol=1e-4, atol=1e-4)
        for t in range(length):
            if targets[row, t]:
                logits = expected[t] @ np.asarray(params["item"], np.float64)[1:].T
                nll.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[targets[row, t] - 1])
    loss = float(next_item_loss(params, items, engaged, targets, heads))
    assert loss == pytest.approx(np.mean(nll), rel=1e-4)
    assert len(nll) == 6  # the two unmarked positions add nothing


def test_windows_cut_from_the_newest_end_and_pad_on_the_left():
    items = np.arange(1, 8)
    got = windows(items, items > 0, items * 10, max_len=3)
    np.testing.assert_array_equal(got[0], [[5, 6, 7], [2, 3, 4], [0, 0, 1]])
    np.testing.assert_array_equal(got[2], [[50, 60, 70], [20, 30, 40], [0, 0, 10]])
    rec = SASRec(max_len=3, input="all")  # "all": a not-engaged next item is no target, but stays input
    events = pd.DataFrame({"user": [0, 0, 0, 0, 1], "item": [4, 2, 7, 1, 3], "engaged": [True, False, True, True, True]})
    items, engaged, targets = rec.training_windows(events)
    np.testing.assert_array_equal(items, [[5, 3, 8]])
    np.testing.assert_array_equal(engaged, [[True, False, True]])
    np.testing.assert_array_equal(targets, [[0, 8, 2]])


# ----------------------------------------------------------------------------- planted order


@pytest.fixture(scope="module")
def chain():
    """16 items; every user's sequence holds A → B → C (items 0, 1, 2) at a random place among 2 to 12
    random other items 3..14; item 15 is never engaged. Only the order tells B after A and C after B."""
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(120):
        others = rng.choice(np.arange(3, 15), size=int(rng.integers(2, 13)), replace=False).tolist()
        cut = int(rng.integers(0, len(others) + 1))
        sequences.append(others[:cut] + [0, 1, 2] + others[cut:])
    data = sequence_data(sequences, 16)
    rec = SASRec(dim=16, blocks=1, max_len=8, dropout=0.0, learning_rate=0.01, epochs=60, batch_size=16).fit(data)
    return data, rec


def test_a_fixed_next_item_is_ranked_first(chain):
    data, rec = chain
    members = [member([5, 9, 0]), member([0]), member([11, 0, 1]), member([7, 3, 12, 0, 1])]
    scores = rec.score(members)
    assert scores.shape == (4, 16)
    assert int(np.argmax(scores[0])) == 1 and int(np.argmax(scores[1])) == 1   # after A: B
    assert int(np.argmax(scores[2])) == 2 and int(np.argmax(scores[3])) == 2   # after A, B: C
    # Without order the model could not tell: the same items, A last, gives B again.
    assert int(np.argmax(rec.score([member([1, 5, 0])])[0])) == 1


def test_a_never_engaged_item_scores_at_chance_or_below(chain):
    data, rec = chain
    rng = np.random.default_rng(1)
    members = [member(rng.choice(15, size=4, replace=False).tolist()) for _ in range(50)]
    scores = rec.score(members).astype(np.float64)
    probability = np.exp(scores - scores.max(1, keepdims=True))
    probability /= probability.sum(1, keepdims=True)
    assert (probability[:, 15] <= 1 / 16).all()  # never a target: the softmax only ever pushed it down
    assert data.popularity()[15] == 0


def test_fits_are_seeded(chain):
    data, rec = chain
    again = SASRec(dim=16, blocks=1, max_len=8, dropout=0.0, learning_rate=0.01, epochs=60, batch_size=16).fit(data)
    members = [member([5, 9, 0]), member([3, 4])]
    np.testing.assert_allclose(again.score(members), rec.score(members), rtol=1e-5, atol=1e-5)


def test_validation_choice_is_the_grid_argmax(chain):
    data, _ = chain
    rng = np.random.default_rng(2)
    members = []
    for u in range(40):  # held-out next items that follow the chain
        prefix = rng.choice(np.arange(3, 15), size=3, replace=False).tolist()
        members.append(EvalMember(f"v{u}", [f"i{j}" for j in prefix + [0]], [True] * 4, ["i1"], "established"))
    grid = {"epochs": (1, 40), "learning_rate": (0.001, 0.01)}
    make = lambda **p: SASRec(dim=16, blocks=1, max_len=8, dropout=0.0, batch_size=16, **p)
    best, table = select_on_validation(make, grid, data, members, metric="recall@1")
    assert [(r["epochs"], r["learning_rate"]) for r in table] == [(e, lr) for e in (1, 40) for lr in (0.001, 0.01)]
    top = max(range(len(table)), key=lambda i: (table[i]["recall@1"], -i))
    assert best == {"epochs": table[top]["epochs"], "learning_rate": table[top]["learning_rate"]}
    assert table[-1]["recall@1"] == 1.0 and table[0]["recall@1"] < 0.5  # the grid does matter


def test_fit_without_events_names_what_is_missing():
    data = sequence_data([[0, 1]], 3)
    data.events = None
    with pytest.raises(ValueError, match="TrainingData.events"):
        SASRec().fit(data)
    with pytest.raises(ValueError, match="input must be one of"):
        SASRec(input="ratings")


# ----------------------------------------------------------------------------- the events it reads


def test_training_events_are_the_periods_interactions_in_time_order():
    from ff_jax.data import load_movielens_100k, temporal_split

    tables = load_movielens_100k()
    splits = temporal_split(tables, progress=False)
    data = training_data(tables, splits, "test")
    events = data.events
    engaged = events[events["engaged"]]
    coo = data.engagements.tocoo()
    assert set(zip(engaged["user"], engaged["item"])) == set(zip(coo.row, coo.col))
    # A test member's history is every interaction before the first target, oldest first: exactly
    # their events; member_events (what `ff-jax eval` rebuilds them with) gives the same rows.
    rebuilt = member_events(splits.test, data)
    for m in splits.test[:100]:
        row = data.user_row(m.user_id)
        mine = events[events["user"] == row]
        assert [data.corpus_ids[i] for i in mine["item"]] == list(m.history)
        assert mine["engaged"].tolist() == list(m.history_engaged)
        assert rebuilt[rebuilt["user"] == row].reset_index(drop=True).equals(mine.reset_index(drop=True))
    validation = training_data(tables, splits, "validation").events
    assert len(validation) < len(events) and validation["engaged"].sum() == 39_568
