"""grain pipelines: the batches hold the right prompts within budget, the same seed gives the same
bytes, a restored iterator continues exactly, processes read disjoint slices, one-tower batches
cover every record once."""

import json

import jax
import numpy as np
import pytest

from ff_jax.data.pipeline import (BatchConfig, embedding_batches, item_key, local_data_shards,
                                  padded_batch_count, suggest_rows, to_global, train_batches)
from ff_jax.data.prompts import PromptFormat
from ff_jax.model.sharding import make_mesh
from ff_jax.model.tokenizer import byte_tokenizer

FMT = PromptFormat(markers=("<item>", "</item>", "<text>", "</text>", "<skill>", "</skill>"),
                   item_last_field="<text>", item_closing="</text></item>")
WORDS = "graph rust hiring payroll kernels vaccines lending chips ads cloud".split()


def item_prompt(i: int) -> str:
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 9))
    return f"<item><text>post {i}: {words}</text></item>"


def make_records(n=40, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for u in range(n):
        history = [int(x) for x in rng.integers(0, 500, rng.integers(0, 8))]
        negatives = [int(x) for x in rng.integers(0, 500, rng.integers(0, 3))]
        positive = int(rng.integers(0, 500))
        records.append({
            "user_id": f"u{u}".encode(), "member_prefix": b"Member.\n",
            "member_profile": [f"<skill>u{u} {WORDS[u % 10]}</skill>".encode()],
            "member_history": [("\n" + item_prompt(h)).encode() for h in history],
            "member_suffix": b"",
            "positive_id": f"i{positive}".encode(), "positive_prompt": item_prompt(positive).encode(),
            "negative_ids": [f"i{j}".encode() for j in negatives],
            "negative_prompts": [item_prompt(j).encode() for j in negatives]})
    return records


RECORDS = make_records()
PACKED = BatchConfig(examples_per_shard=4, length=96, member_budget=90, item_budget=40, num_hard_negatives=2,
                     member_rows=3, item_rows=3, max_segments=4)


def tokenizer():
    return byte_tokenizer(FMT.markers)


def take(dataset_or_iter, n):
    it = iter(dataset_or_iter)
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert type(a) is type(b)
    for key, value in vars(a).items():  # every field of the typed batch
        np.testing.assert_array_equal(np.asarray(value), np.asarray(getattr(b, key)), err_msg=key)


def segment(tokens, segment_ids, slot, max_segments):
    row, seg = divmod(int(slot), max_segments)
    return tokens[row][segment_ids[row] == seg + 1]


def test_train_batches_hold_each_example_prompts_within_budget():
    tok = tokenizer()
    batches = take(train_batches(RECORDS, tok, FMT, PACKED, seed=0, num_epochs=1, shard_index=0, shard_count=1), 6)
    by_user = {r["user_id"].decode(): r for r in RECORDS}
    checked = 0
    for batch in batches:
        assert batch.member_tokens.shape == (1, 3, 96) and batch.negative_slot.shape == (1, 4, 2)
        for b in np.flatnonzero(batch.example_mask[0]):
            member = segment(batch.member_tokens[0], batch.member_segment_ids[0], batch.member_slot[0, b], 4)
            assert member[0] == tok.bos_id and member[-1] == tok.eos_id and len(member) <= 90
            text = tok.decode(member[1:-1])
            record = by_user[text.split("<skill>")[1].split()[0]]
            profile, history = record["member_profile"][0].decode(), [h.decode() for h in record["member_history"]]
            assert text.startswith("Member.\n" + profile)
            kept = text[len("Member.\n" + profile):]
            k = kept.count("<item>")
            assert kept == "".join(history[:k])  # the newest k items, whole
            if k < len(history):  # and the next one would have broken the budget
                assert len(member) + len(tok.encode(history[k])) > 90
            positive = segment(batch.item_tokens[0], batch.item_segment_ids[0], batch.positive_slot[0, b], 4)
            want = tok.encode(record["positive_prompt"].decode())
            want = want if len(want) <= 38 else want[:38 - 2] + tok.encode("</text></item>")
            np.testing.assert_array_equal(positive, [tok.bos_id, *want, tok.eos_id])
            assert batch.positive_key[0, b] == item_key(record["positive_id"].decode())
            negatives = [s for s in batch.negative_slot[0, b] if s >= 0]
            assert len(negatives) == min(2, len(record["negative_prompts"]))
            checked += 1
    assert checked > 10


def test_same_seed_same_bytes_other_seed_other_order():
    cfg = dict(seed=3, num_epochs=None, shard_index=0, shard_count=1)
    a = take(train_batches(RECORDS, tokenizer(), FMT, PACKED, **cfg), 5)
    b = take(train_batches(RECORDS, tokenizer(), FMT, PACKED, **cfg), 5)
    for x, y in zip(a, b):
        assert_same(x, y)
    c = take(train_batches(RECORDS, tokenizer(), FMT, PACKED, **dict(cfg, seed=4)), 1)
    assert not np.array_equal(a[0].member_tokens, c[0].member_tokens)


@pytest.mark.parametrize("mode", ["packed", "bucketed"])
def test_a_restored_iterator_reproduces_the_remaining_batches(mode):
    config = PACKED if mode == "packed" else BatchConfig(
        examples_per_shard=3, length=96, member_budget=90, item_budget=40, num_hard_negatives=2,
        mode="bucketed", bucket_boundaries=(48, 96))
    args = dict(seed=7, num_epochs=2, num_shards=2, shard_index=0, shard_count=1)
    reference = list(train_batches(RECORDS, tokenizer(), FMT, config, **args))
    it = iter(train_batches(RECORDS, tokenizer(), FMT, config, **args))
    for _ in range(len(reference) // 3):  # mid-epoch
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what orbax's grain handler writes
    if mode == "packed":
        assert state["carry"], "the checkpoint should fall where examples are carried over"
    restored = iter(train_batches(RECORDS, tokenizer(), FMT, config, **args))  # a fresh process
    restored.set_state(state)
    rest = list(restored)
    assert len(rest) == len(reference) - len(reference) // 3
    for got, want in zip(rest, reference[len(reference) // 3:]):
        assert_same(got, want)
    # Two epochs: every example twice, none lost by the carry or the buckets.
    assert sum(int(b.example_mask.sum()) for b in reference) == 2 * len(RECORDS)


def test_processes_read_disjoint_slices_and_embedding_covers_every_record_once():
    corpus = [{"item_id": f"i{i}".encode(), "item_prompt": item_prompt(i).encode()} for i in range(53)]
    config = BatchConfig(examples_per_shard=5, length=80, item_budget=80, max_segments=3, item_rows=3)
    seen = []
    for process in range(2):
        batches = list(embedding_batches(corpus, tokenizer(), FMT, config, tower="item", num_shards=2,
                                         shard_index=process, shard_count=2))
        for batch in batches:
            assert batch.tokens.shape == (2, 3, 80) and len(batch.ids) == 10
            flat_mask = batch.example_mask.reshape(-1)
            assert [bool(i) for i in batch.ids] == [bool(m) for m in flat_mask]
            for n in range(2):
                for b in np.flatnonzero(batch.example_mask[n]):
                    tokens = segment(batch.tokens[n], batch.segment_ids[n], batch.slot[n, b], 3)
                    item = int(batch.ids[n * 5 + b][1:])
                    assert tokenizer().decode(tokens[1:-1]) == item_prompt(item)
        ids = [i for batch in batches for i in batch.ids if i]
        assert all(int(i[1:]) % 2 == process for i in ids)  # process p reads records p, p+2, ...
        seen += ids
    assert sorted(seen) == sorted(f"i{i}" for i in range(53))


def test_embedding_shapes_fill_rows_with_every_prompt_once_and_pad_less_than_training_rows():
    corpus = [{"item_id": f"i{i}".encode(), "item_prompt": item_prompt(i).encode()} for i in range(60)]
    training = BatchConfig(examples_per_shard=4, length=128, member_budget=128, item_budget=64, max_segments=4)
    config = training.for_embedding("item", max_segments=8)
    # Rows as long as the item budget, as many of them as keep the training call's token count.
    assert (config.length, config.tower_spec("item").rows, config.max_segments) == (64, 4, 8)
    assert config.examples_per_shard == 32

    def embedded(cfg):
        """(id -> the token ids embedded for it, the fraction of padding slots)."""
        batches = list(embedding_batches(corpus, tokenizer(), FMT, cfg, tower="item"))
        seen = {}
        for batch in batches:
            for b in np.flatnonzero(batch.example_mask[0]):
                assert batch.ids[b] not in seen
                seen[batch.ids[b]] = segment(batch.tokens[0], batch.segment_ids[0], batch.slot[0, b],
                                             cfg.max_segments).tolist()
        pad = sum(int((b.segment_ids == 0).sum()) for b in batches) / sum(b.segment_ids.size for b in batches)
        return seen, pad

    (packed, packed_pad), (rows, rows_pad) = embedded(config), embedded(training)
    assert packed == rows and len(packed) == 60  # the same tokens for every prompt, each once
    assert packed_pad < 0.5 * rows_pad
    assert training.for_embedding("member").tower_spec("member").length == 128
    assert BatchConfig(mode="padded").for_embedding("item") == BatchConfig(mode="padded")


def test_padded_eval_gives_every_process_the_same_number_of_batches():
    corpus = [{"item_id": f"i{i}".encode(), "item_prompt": item_prompt(i).encode()} for i in range(41)]
    config = BatchConfig(examples_per_shard=5, length=80, mode="padded")

    def run(process, min_batches=0):
        return list(embedding_batches(corpus, tokenizer(), FMT, config, tower="item", num_shards=2,
                                      shard_index=process, shard_count=2, min_batches=min_batches))

    assert [len(run(p)) for p in (0, 1)] == [3, 2]  # 21 and 20 records, 10 per batch
    wanted = padded_batch_count(len(corpus), config, num_shards=2, shard_count=2)
    evened = [run(p, wanted) for p in (0, 1)]
    assert [len(b) for b in evened] == [3, 3]
    assert evened[1][-1].example_mask.sum() == 0 and not any(evened[1][-1].ids)
    assert sum(int(b.example_mask.sum()) for batches in evened for b in batches) == 41


def test_member_embedding_batches_and_global_arrays_on_a_mesh():
    mesh = make_mesh(data=-1)
    n = local_data_shards(mesh)
    assert n == len(jax.devices())
    config = BatchConfig(examples_per_shard=2, length=96, mode="padded")
    batch = next(iter(embedding_batches(RECORDS, tokenizer(), FMT, config, tower="member", num_shards=n)))
    assert batch.tokens.shape == (n, 2, 96) and batch.ids[:3] == ["u0", "u1", "u2"]
    arrays = to_global(batch, mesh)
    assert arrays.tokens.shape == (n, 2, 96) and arrays.ids == batch.ids
    assert len(arrays.tokens.sharding.device_set) == n
    np.testing.assert_array_equal(np.asarray(arrays.slot), batch.slot)
    np.testing.assert_array_equal(np.asarray(arrays.tokens), batch.tokens)
    # Contents: each example's prompt (padded mode: one per row) decodes to its member's own text.
    tok, by_user = tokenizer(), {r["user_id"].decode(): r for r in RECORDS}
    for shard in range(n):
        for b in np.flatnonzero(batch.example_mask[shard]):
            record = by_user[batch.ids[shard * 2 + b]]
            member = segment(batch.tokens[shard], batch.segment_ids[shard], batch.slot[shard, b], 1)
            assert member[0] == tok.bos_id and member[-1] == tok.eos_id
            text = tok.decode(member[1:-1])
            head = "Member.\n" + record["member_profile"][0].decode()
            history = [h.decode() for h in record["member_history"]]
            assert text.startswith(head) and text[len(head):] == "".join(history[:text.count("<item>")])
            np.testing.assert_array_equal(batch.positions[shard, int(batch.slot[shard, b])][: len(member)],
                                          np.arange(len(member)))


def test_suggested_rows_cover_the_mean_length_with_headroom():
    assert suggest_rows([100] * 50, prompts_per_shard=8, length=400) == 3  # 1.15 * 800 / 400
    with pytest.raises(ValueError, match="item_budget=300 exceeds"):
        BatchConfig(length=256, item_budget=300)
