"""Exact kNN on the accelerator: jitted matmul + lax.top_k, the published system's GPU path.

The corpus lives on the host in fixed-size chunks. Each chunk goes to the device (and stays
there while the whole corpus fits in `max_resident_bytes`), is scored against a batch of queries,
and its top-k is merged into a running top-k, so the device never holds more than one chunk's
scores and a corpus larger than device memory still works. Given a mesh, every chunk is split
row-wise over the mesh's data axis: each device takes the top-k of its rows, then the per-device
winners are merged.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ff_jax import files
from ff_jax.files import STORAGE_DTYPES
from ff_jax.retrieval.index import Index, IndexFormatError, register_index

CORPUS_FILE = "corpus.npy"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ExactConfig:
    """Knobs of the exact index.

    dtype: storage and matmul input type ("float32", "bfloat16", "float16"); scores accumulate
        in float32 either way. Half precision halves memory and transfer at ~1e-3 score error.
    chunk_rows: corpus rows scored per step (rounded up to a multiple of the data-axis size).
    query_batch: the most queries scored together; a chunk's score block is query_batch x
        chunk_rows float32, the main device-memory cost besides the corpus.
    max_resident_bytes: keep the corpus on the device between searches while it fits in this
        many bytes; above it, chunks are streamed from the host on every search.
    data_axis: the mesh axis that splits corpus rows when a mesh is given.
    """

    dtype: str = "float32"
    chunk_rows: int = 262_144
    query_batch: int = 256
    max_resident_bytes: int = 4 << 30
    data_axis: str = "data"

    def __post_init__(self) -> None:
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"ExactConfig.dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}")
        for field in ("chunk_rows", "query_batch"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ExactConfig.{field} must be positive, got {getattr(self, field)}")


def _score_top_k(queries, chunk, first_row, n_valid, k):
    """Top-k (scores, global rows) of one block of corpus rows; rows >= n_valid are padding."""
    scores = jnp.einsum("qd,nd->qn", queries, chunk, preferred_element_type=jnp.float32)
    rows = first_row + jnp.arange(chunk.shape[0], dtype=jnp.int32)
    scores = jnp.where(rows[None, :] < n_valid, scores, -jnp.inf)
    top_scores, top = jax.lax.top_k(scores, min(k, chunk.shape[0]))
    return top_scores, rows[top]


def _merge(run_scores, run_rows, new_scores, new_rows, k):
    scores = jnp.concatenate([run_scores, new_scores], axis=1)
    rows = jnp.concatenate([run_rows, new_rows], axis=1)
    top_scores, top = jax.lax.top_k(scores, k)
    return top_scores, jnp.take_along_axis(rows, top, axis=1)


@functools.partial(jax.jit, static_argnames="k")
def _step(queries, chunk, first_row, n_valid, run_scores, run_rows, *, k):
    s, r = _score_top_k(queries, chunk, first_row, n_valid, k)
    return _merge(run_scores, run_rows, s, r, k)


@functools.lru_cache(maxsize=None)
def _sharded_step(mesh: Mesh, axis: str, k: int):
    """_step with the chunk's rows split over `axis`: per-device top-k, gathered, merged."""

    def local(queries, chunk, first_row, n_valid, run_scores, run_rows):
        start = first_row + jax.lax.axis_index(axis) * chunk.shape[0]
        s, r = _score_top_k(queries, chunk, start, n_valid, k)
        # Every device gets all devices' winners (devices x k columns) and merges them alike.
        s = jax.lax.all_gather(s, axis, axis=1, tiled=True)
        r = jax.lax.all_gather(r, axis, axis=1, tiled=True)
        return _merge(run_scores, run_rows, s, r, k)

    replicated = P()
    return jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(replicated, P(axis, None), replicated, replicated, replicated, replicated),
            out_specs=(replicated, replicated),
            check_vma=False,  # the all_gather + identical merge make the outputs replicated
        )
    )


def _bucket(n: int, cap: int) -> int:
    """Pad query counts to powers of two (capped) so few shapes are ever compiled."""
    return min(cap, 1 << max(0, (n - 1).bit_length()))


@register_index
class ExactIndex(Index):
    """Brute-force cosine kNN with jax; see the module docstring for the chunking and sharding."""

    kind = "exact"

    def __init__(self, config: ExactConfig | None = None, mesh: Mesh | None = None) -> None:
        super().__init__()
        self.config = config or ExactConfig()
        self.mesh = mesh
        self._dtype = STORAGE_DTYPES[self.config.dtype]
        shards = 1
        if mesh is not None:
            if self.config.data_axis not in mesh.shape:
                raise ValueError(
                    f"mesh axes {tuple(mesh.shape)} have no data axis '{self.config.data_axis}'"
                )
            shards = mesh.shape[self.config.data_axis]
        self._shards = shards
        self._chunk_rows = 0  # set from the corpus size by _append
        self._host = np.zeros((0, 0), self._dtype)  # capacity rows: a multiple of _chunk_rows
        self._rows = 0
        self._device_chunks: dict[int, jax.Array] = {}

    # -- storage ----------------------------------------------------------------------------

    def _build(self, vectors: np.ndarray) -> None:
        self._host = np.zeros((0, vectors.shape[1]), self._dtype)
        self._rows = 0
        self._device_chunks.clear()
        self._append(vectors)

    def on_mesh(self, mesh: Mesh | None) -> ExactIndex:
        """The same index with its corpus rows split over `mesh`'s data axis (None: one device)."""
        self._require_built()
        other = ExactIndex(self.config, mesh)
        other._build(self._host[: self._rows])
        other._ids, other._dim = self._ids, self._dim
        return other

    def _add(self, vectors: np.ndarray) -> None:
        self._append(vectors)

    def _append(self, vectors: np.ndarray) -> None:
        needed = self._rows + vectors.shape[0]
        chunk_rows = self._chunk_rows_for(needed)
        if chunk_rows != self._chunk_rows:
            self._chunk_rows = chunk_rows
            self._device_chunks.clear()
        capacity = self._host.shape[0]
        if needed > capacity:  # grow geometrically so repeated small adds stay cheap
            capacity = max(needed, 2 * capacity)
        capacity = -(-capacity // chunk_rows) * chunk_rows  # whole chunks: every chunk has one shape
        if capacity != self._host.shape[0]:
            grown = np.zeros((capacity, vectors.shape[1]), self._dtype)
            grown[: self._rows] = self._host[: self._rows]
            self._host = grown
        self._host[self._rows : needed] = vectors.astype(self._dtype)
        for c in range(self._rows // chunk_rows, -(-needed // chunk_rows)):
            self._device_chunks.pop(c, None)  # chunks whose rows changed
        self._rows = needed

    def _chunk_rows_for(self, rows: int) -> int:
        """config.chunk_rows, or the next power of two above a smaller corpus (few shapes, no
        huge padding), rounded up to a multiple of the data-axis size."""
        rows = min(self.config.chunk_rows, 1 << max(0, (rows - 1).bit_length()))
        return -(-rows // self._shards) * self._shards

    def _chunk(self, c: int) -> jax.Array:
        cached = self._device_chunks.get(c)
        if cached is not None:
            return cached
        block = self._host[c * self._chunk_rows : (c + 1) * self._chunk_rows]
        if self.mesh is None:
            chunk = jax.device_put(block)
        else:
            chunk = jax.device_put(block, NamedSharding(self.mesh, P(self.config.data_axis, None)))
        if self.resident:
            self._device_chunks[c] = chunk
        return chunk

    @property
    def nbytes(self) -> int:
        """Bytes of corpus storage (rows x dim x storage dtype)."""
        return self._rows * self._host.shape[1] * self._host.itemsize

    @property
    def resident(self) -> bool:
        """Whether the corpus stays on the device between searches (else it is streamed)."""
        return self.nbytes <= self.config.max_resident_bytes

    # -- search -----------------------------------------------------------------------------

    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self._top_k(queries, 1 << (k - 1).bit_length())  # pow2 k: few compiles
        return scores[:, :k], rows[:, :k]

    def _top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n_queries = queries.shape[0]
        batch = _bucket(n_queries, self.config.query_batch)
        if self.config.dtype != "float32":
            batch = max(batch, 8)  # XLA:CPU's half-precision matrix-vector product is ~10x slower
        padded = -(-n_queries // batch) * batch
        q_host = np.zeros((padded, queries.shape[1]), self._dtype)
        q_host[:n_queries] = queries.astype(self._dtype)
        if self.mesh is None:
            step = functools.partial(_step, k=k)
            q_dev = jax.device_put(q_host)
        else:
            step = _sharded_step(self.mesh, self.config.data_axis, k)
            q_dev = jax.device_put(q_host, NamedSharding(self.mesh, P()))
        batches = [q_dev[i : i + batch] for i in range(0, padded, batch)]
        running = [
            (jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.full((batch, k), -1, jnp.int32))
            for _ in batches
        ]
        n_valid = jnp.int32(self._rows)
        # Chunks outer, query batches inner: each chunk crosses to the device once per search.
        for c in range(-(-self._rows // self._chunk_rows)):
            chunk = self._chunk(c)
            first = jnp.int32(c * self._chunk_rows)
            running = [step(qb, chunk, first, n_valid, *run) for qb, run in zip(batches, running)]
        scores = np.concatenate([np.asarray(s) for s, _ in running])[:n_queries]
        rows = np.concatenate([np.asarray(r) for _, r in running])[:n_queries]
        return scores, rows

    # -- persistence ------------------------------------------------------------------------

    def _save(self, path: Path) -> dict[str, Any]:
        files.save_npy(path / CORPUS_FILE, self._host[: self._rows])
        return dataclasses.asdict(self.config)

    @classmethod
    def _load(cls, path: Path, manifest: dict[str, Any]) -> ExactIndex:
        try:
            config = ExactConfig(**manifest["config"])
        except TypeError as err:
            raise IndexFormatError(f"{path / 'manifest.json'}: bad exact config ({err})") from None
        corpus = files.load_npy(path / CORPUS_FILE, bfloat16=config.dtype == "bfloat16", error=IndexFormatError)
        if corpus.shape != (manifest["count"], manifest["dim"]):
            raise IndexFormatError(
                f"{path / CORPUS_FILE}: shape {corpus.shape} does not match the manifest "
                f"(count={manifest['count']}, dim={manifest['dim']})"
            )
        index = cls(config)
        index._build(corpus)
        return index
