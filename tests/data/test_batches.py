"""The batch contract: stacking shards, host-only fields kept off devices, optional fields, and
docs/contracts.md naming exactly the fields the types have."""

import dataclasses
import re
from pathlib import Path

import jax
import numpy as np

from ff_jax.data.batches import DualTowerBatch, EmbeddingBatch, device_part, host_fields, stack_shards
from ff_jax.model import make_mesh
from ff_jax.train import step as steps

DOC = Path(__file__).parents[2] / "docs" / "contracts.md"


def embedding_shard(ids, rows=2, length=4):
    n = len(ids)
    return EmbeddingBatch(tokens=np.full((rows, length), 7, np.int32), segment_ids=np.ones((rows, length), np.int32),
                          positions=np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
                          slot=np.arange(n, dtype=np.int32), example_mask=np.ones(n, np.float32), ids=list(ids))


def test_stack_shards_adds_the_shard_axis_and_concatenates_ids():
    batch = stack_shards([embedding_shard(["a", "b"]), embedding_shard(["c", ""])])
    assert batch.tokens.shape == (2, 2, 4) and batch.slot.shape == (2, 2)
    assert batch.ids == ["a", "b", "c", ""]
    assert host_fields(EmbeddingBatch) == ["ids"] and host_fields(DualTowerBatch) == []


def test_ids_never_reach_devices_and_do_not_retrace():
    mesh = make_mesh(data=-1)
    n = len(jax.devices())
    traces = []

    @jax.jit
    def total(batch):
        traces.append(1)
        return batch.tokens.sum() + batch.example_mask.sum()

    for names in (["x", "y"], ["p", "q"]):  # same shapes, other ids
        batch = stack_shards([embedding_shard(names) for _ in range(n)])
        placed = steps.device_batch(batch, steps.batch_shardings(batch, mesh))
        assert placed.ids is None and device_part(batch).ids is None and batch.ids
        assert float(total(placed)) == n * (2 * 4 * 7 + 2)
    assert len(traces) == 1


def test_an_optional_field_left_out_costs_nothing_on_device():
    mesh = make_mesh(data=-1)
    n = len(jax.devices())
    b, h = 2, 1
    fields = {f.name: np.zeros((n, b, h) if f.name == "negative_slot" else (n, b), np.int32)
              for f in dataclasses.fields(DualTowerBatch) if f.default is dataclasses.MISSING}
    for name in ("member_tokens", "member_segment_ids", "member_positions", "item_tokens", "item_segment_ids",
                 "item_positions"):
        fields[name] = np.ones((n, 2, 4), np.int32)
    batch = DualTowerBatch(**fields)
    assert batch.positive_key is None and batch.negative_key is None
    shardings = steps.batch_shardings(batch, mesh)
    assert shardings.positive_key is None and len(jax.tree.leaves(shardings)) == 10
    placed = steps.device_batch(batch, shardings)
    assert placed.positive_key is None
    # jit with these shardings, as the train step is compiled: a None field is an empty subtree.
    run = jax.jit(lambda x: x.member_tokens.sum() if x.positive_key is None else -1, in_shardings=(shardings,))
    assert int(run(placed)) == n * 2 * 4


def _documented_fields(section: str) -> set[str]:
    text = DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", body, flags=re.M))


def test_contracts_doc_names_every_field_of_each_batch():
    assert _documented_fields("Dual-tower training batch") == {f.name for f in dataclasses.fields(DualTowerBatch)}
    assert _documented_fields("One-tower embedding batch") == {f.name for f in dataclasses.fields(EmbeddingBatch)}
