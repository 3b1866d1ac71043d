"""docs/contracts.md's ranker-batch table names exactly RankerBatch's fields."""

import dataclasses
import re
from pathlib import Path

from ff_jax.data.batches import RankerBatch

DOC = Path(__file__).parents[2] / "docs" / "contracts.md"


def test_contracts_doc_names_every_field_of_the_ranker_batch():
    body = DOC.read_text().split("## Ranker batch\n", 1)[1].split("\n## ", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", body, flags=re.M)) == {f.name for f in dataclasses.fields(RankerBatch)}
