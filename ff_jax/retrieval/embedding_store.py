"""Embeddings on disk in shards, written so that a crashed job resumes where it stopped.

A tower folder (e.g. `<workdir>/embeddings/items/`) holds, for shard s (records
[s * shard_size, (s + 1) * shard_size) of the input):
    shard-00007.ids.npy       the record ids (str), in record order
    shard-00007.d<dim>.npy    L2-normalised vectors at each stored width (the full width, plus the
                              Matryoshka prefixes asked for, each re-normalised after the cut);
                              bfloat16 is stored as its raw uint16 bits (.npy has no bfloat16)
    manifest.json             the settings and, per finished shard, its row count and file checksums
Files are written under a temporary name and renamed, and a shard enters the manifest only after
all its files are in place, so after a crash every shard in the manifest is whole. A rerun with
the same settings skips those shards once their files pass their checksums (a shard whose files
were damaged since is computed again, with a warning naming the file); different settings
(another model, dtype, widths, shard size or input) are refused with the differing field named,
unless `overwrite` wipes the folder. The settings hold no absolute path, so a copied or moved
workdir resumes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from ff_jax import files
from ff_jax.files import MANIFEST, STORAGE_DTYPES
from ff_jax.rows import unit_rows

FORMAT_VERSION = 1


class EmbeddingStoreError(ValueError):
    """A tower folder is missing, incomplete, corrupt, or holds embeddings made with other settings."""


class CorruptEmbeddingFile(EmbeddingStoreError):
    """A shard file that is missing or not what was written (its checksum does not match)."""

    label = "corrupt file"


def truncate_normalise(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` components of each row, scaled back to unit length (float32)."""
    return unit_rows(np.asarray(vectors)[:, :dim], f"embeddings cut to {dim} dims")


class ShardWriter:
    """Writes one tower's shards; `settings` must match any earlier run in the same folder.

    With several processes every one computes every shard (SPMD), and only the `primary` one
    touches the disk; the others only read the manifest to agree on the pending shards.
    """

    def __init__(self, directory: str | Path, settings: dict[str, Any], overwrite: bool = False,
                 primary: bool = True):
        self.directory, self.primary = Path(directory), primary
        self.settings = json.loads(json.dumps(settings))  # normalised as JSON would read it back
        for key in ("records", "shard_size", "width", "dims", "dtype"):
            if key not in self.settings:
                raise ValueError(f"embedding settings lack {key!r}")
        if self.settings["dtype"] not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.settings['dtype']!r}")
        width, dims = self.settings["width"], self.settings["dims"]
        if any(not 0 < d <= width for d in dims) or width not in dims:
            raise ValueError(f"dims {dims} must lie in 1..{width} and include the full width {width}")
        if self.settings["shard_size"] < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.settings['shard_size']}")
        manifest = self._read()
        if manifest is not None and manifest["settings"] != self.settings:
            if not overwrite:
                diffs = [f"{k}: {manifest['settings'].get(k)!r} on disk, {v!r} now"
                         for k, v in self.settings.items() if manifest["settings"].get(k) != v]
                raise EmbeddingStoreError(
                    f"{self.directory} holds embeddings made with other settings:\n  " + "\n  ".join(diffs)
                    + "\nUse another output folder (--gin.EmbedConfig.output=NAME), or "
                    "--gin.EmbedConfig.overwrite=True to discard them.")
            if primary:
                shutil.rmtree(self.directory)
            manifest = None
        self.manifest = manifest or {"version": FORMAT_VERSION, "settings": self.settings, "shards": {}}
        if primary:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._flush()

    def _read(self) -> dict | None:
        path = self.directory / MANIFEST
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise EmbeddingStoreError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None

    def _flush(self) -> None:
        files.write_manifest(self.directory / MANIFEST, self.manifest)

    @property
    def num_shards(self) -> int:
        return -(-self.settings["records"] // self.settings["shard_size"])

    def shard_range(self, shard: int) -> tuple[int, int]:
        size = self.settings["shard_size"]
        return shard * size, min((shard + 1) * size, self.settings["records"])

    def shard_files(self, shard: int) -> list[str]:
        stem = f"shard-{shard:05d}"
        return [f"{stem}.ids.npy", *(f"{stem}.d{dim}.npy" for dim in self.settings["dims"])]

    def damage(self, shard: int) -> str | None:
        """Why finished shard `shard` cannot be trusted (a file missing, unlisted or failing its
        checksum), or None when it is whole."""
        listed = self.manifest["shards"][str(shard)]["files"]
        for name in self.shard_files(shard):
            if name not in listed:
                return f"{self.directory / name}: no checksum in {MANIFEST}"
            try:
                files.verify(self.directory / name, listed[name], CorruptEmbeddingFile)
            except CorruptEmbeddingFile as err:
                return str(err)
        return None

    def pending(self) -> list[int]:
        """The shards to compute: those not finished, and finished ones that fail their checksums
        now (each said in a warning); reads every finished shard once."""
        todo = []
        for shard in range(self.num_shards):
            if str(shard) in self.manifest["shards"]:
                problem = self.damage(shard)
                if problem is None:
                    continue
                logging.warning("recomputing shard %d of %s: %s", shard, self.directory, problem)
            todo.append(shard)
        return todo

    def write(self, shard: int, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Stores shard `shard` (its ids and full-width un-normalised vectors) and records it."""
        start, stop = self.shard_range(shard)
        vectors = np.asarray(vectors, np.float32)
        if len(ids) != stop - start or vectors.shape != (stop - start, self.settings["width"]):
            raise ValueError(f"shard {shard} needs {stop - start} ids and vectors of width {self.settings['width']}; "
                             f"got {len(ids)} ids and vectors {vectors.shape}")
        if not self.primary:
            return
        dtype = STORAGE_DTYPES[self.settings["dtype"]]
        names = self.shard_files(shard)
        arrays = {name: truncate_normalise(vectors, dim).astype(dtype)
                  for name, dim in zip(names[1:], self.settings["dims"])}
        arrays[names[0]] = np.asarray(list(ids), dtype=str)
        checksums = {name: files.save_npy(self.directory / name, array) for name, array in arrays.items()}
        self.manifest["shards"][str(shard)] = {"rows": stop - start, "files": checksums}
        self._flush()


def read_tower(directory: str | Path, dim: int | None = None, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(ids [n] str, float32 unit vectors [n, dim]) of a finished tower folder; dim None = full width."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.exists():
        raise EmbeddingStoreError(f"{directory}: no {MANIFEST} (not an embedding folder; run `ff-jax embed`)")
    manifest = json.loads(path.read_text())
    settings = manifest["settings"]
    dim = settings["width"] if dim is None else dim
    if dim not in settings["dims"]:
        raise EmbeddingStoreError(f"{directory}: width {dim} was not stored (stored: {settings['dims']}); "
                                  "rerun ff-jax embed with it in EmbedConfig.dims")
    shards = -(-settings["records"] // settings["shard_size"])
    missing = [s for s in range(shards) if str(s) not in manifest["shards"]]
    if missing:
        raise EmbeddingStoreError(f"{directory}: incomplete, {shards - len(missing)} of {shards} shards done "
                                  f"(first missing: {missing[0]}); rerun ff-jax embed to finish")
    ids, vectors = [], []
    for s in range(shards):
        checksums = manifest["shards"][str(s)]["files"]
        names = (f"shard-{s:05d}.ids.npy", f"shard-{s:05d}.d{dim}.npy")
        unlisted = [name for name in names if name not in checksums]
        if verify and unlisted:
            raise CorruptEmbeddingFile(f"{directory / unlisted[0]}: no checksum in {path}")
        shard_id, stored = (files.load_npy(directory / name, checksums[name] if verify else None,
                                           bfloat16=name.endswith(f".d{dim}.npy") and settings["dtype"] == "bfloat16",
                                           error=CorruptEmbeddingFile)
                            for name in names)
        ids.append(shard_id)
        vectors.append(stored.astype(np.float32))
    return np.concatenate(ids), np.concatenate(vectors)


def tower_settings(directory: str | Path) -> dict:
    """The settings a tower folder was written with."""
    return json.loads((Path(directory) / MANIFEST).read_text())["settings"]
