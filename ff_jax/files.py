"""Files that must be whole and verifiable, written one way for the index, the embedding store and
(later) the serving bundle: atomic writes, sha256 checksums checked on read, a manifest.json, and
.npy arrays with bfloat16 stored as its raw uint16 bits (.npy has no bfloat16).
"""

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

MANIFEST = "manifest.json"
# dtype names of stored embeddings (the index's corpus, the embedding store's shards).
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's entry list: a rename in it survives a crash only then)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> str:
    """Writes under a temporary name, syncs, then renames, so a crash never leaves half a file;
    returns the sha256 of the bytes written."""
    data = data.encode() if isinstance(data, str) else data
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """`manifest` as sorted JSON at `path`, atomically."""
    write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))


def checksum_names(directory: Path) -> list[str]:
    """The relative paths `checksums` covers: every file under `directory` but its manifest."""
    directory = Path(directory)
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` but its manifest, by relative path."""
    return {name: sha256_file(Path(directory) / name) for name in checksum_names(directory)}


def _checked(file: Path, actual: str | None, expected: str | None, error: type[Exception]) -> None:
    if actual is None:
        raise error(f"{file}: listed in the manifest but missing")
    if expected is not None and actual != expected:
        raise error(f"{file}: checksum mismatch (corrupt or modified)")


def verify(file: Path, expected: str, error: type[Exception] = ValueError) -> None:
    """Raises `error` naming `file` when it is missing or its sha256 is not `expected`."""
    _checked(file, sha256_file(file) if Path(file).is_file() else None, expected, error)


def save_npy(path: Path, array: np.ndarray) -> str:
    """`array` as .npy, atomically (bfloat16 as its uint16 bits); returns the file's sha256."""
    array = np.asarray(array)
    if array.dtype == ml_dtypes.bfloat16:
        array = array.view(np.uint16)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return write_atomic(path, buffer.getvalue())


def load_npy(file: Path, sha256: str | None = None, bfloat16: bool = False,
             error: type[Exception] = ValueError) -> np.ndarray:
    """The .npy at `file`, read once and checked against `sha256` (None: not checked);
    `bfloat16`: the file holds bfloat16 bits (see save_npy)."""
    data = Path(file).read_bytes() if Path(file).is_file() else None
    _checked(file, None if data is None else hashlib.sha256(data).hexdigest(), sha256, error)
    array = np.load(io.BytesIO(data), allow_pickle=False)
    return array.view(ml_dtypes.bfloat16) if bfloat16 else array


# A manifest that covers itself: a sha256 over its own fields (sorted JSON), so an edited setting or
# a dropped checksum entry is refused like a corrupt file instead of loading with other results.
SEAL = "manifest_sha256"


def _seal_of(manifest: dict[str, Any]) -> str:
    fields = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` plus its own sha256 under SEAL (see check_seal)."""
    return {**manifest, SEAL: _seal_of(manifest)}


def check_seal(file: Path, manifest: dict[str, Any], error: type[Exception] = ValueError) -> None:
    """Raises `error` naming `file` when `manifest` (read from it) lacks its SEAL or no longer matches it."""
    if SEAL not in manifest:
        raise error(f"{file}: has no {SEAL}, so edits to it cannot be detected (written by an older "
                    "version, or the field was removed); write it again")
    if manifest[SEAL] != _seal_of(manifest):
        raise error(f"{file}: edited after it was written (its {SEAL} does not match its contents); "
                    "write it again rather than editing it")
