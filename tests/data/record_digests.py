"""Digests of every record of a prepared dataset, in order: what "the same records" means in tests."""

import hashlib
import json
from pathlib import Path

import numpy as np

GOLDEN = json.loads((Path(__file__).parent / "golden_prompt_records.json").read_text())["datasets"]


def canonical(value):
    """Text as str and sequences as lists, whatever the source returned (TFDS gave bytes and arrays)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [canonical(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def digests(sources) -> dict:
    """split -> {records, sha256 over the canonical JSON of each record, one line each}."""
    out = {}
    for split, source in sources.items():
        digest = hashlib.sha256()
        for i in range(len(source)):
            record = source[i]
            digest.update(json.dumps({k: canonical(record[k]) for k in sorted(record)}, sort_keys=True,
                                     ensure_ascii=False).encode() + b"\n")
        out[split] = {"records": len(source), "sha256": digest.hexdigest()}
    return out
