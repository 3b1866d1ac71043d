"""ScaNN behind the Index interface: k-means tree + anisotropic asymmetric hashing + exact reorder.

Defaults follow ScaNN's tuning guidance, derived from the corpus size n and the requested k:
about sqrt(n) leaves; a share of leaves searched and a reorder depth that both grow with k
(more neighbours are spread over more leaves and need a deeper exact re-scoring). Every knob is a
field of the gin-configurable `ScannConfig`.

Freshness: `add()` uses ScaNN's own upsert (scann 1.4.2 supports it): a new row goes to its
nearest existing leaf and is hashed with the existing codebook, so it is searchable at once, with
no rebuild. The partitions and codebooks were trained on the old rows, so once the rows added
since training exceed `retrain_fraction` of the rows trained on, add() retrains them (ScaNN's
rebalance) with defaults recomputed for the new size.

ScaNN itself is imported inside the methods that use it: `import ff_jax.retrieval` (which lists
this class) and loading an exact index then never pay its 0.2 s import.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import gin
import numpy as np

from ff_jax.retrieval.index import Index, IndexFormatError, register_index

SCANN_DIR = "scann"
REORDER_DTYPES = ("float32", "bfloat16", "int8")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ScannConfig:
    """Knobs of the ScaNN index; None means "derive from the corpus size / k" (see defaults_for).

    num_leaves: k-means leaves of the tree (default round(sqrt(n))).
    leaves_to_search: leaves scanned per query (default: leaves_fraction of the leaves, grown
        with k so that the scanned rows are at least `rows_per_neighbor` * k).
    leaves_fraction: share of the leaves searched for small k.
    rows_per_neighbor: scanned rows per requested neighbour at large k.
    reorder_k: candidates re-scored exactly (default max(min_reorder, reorder_multiplier * k)).
    dims_per_block: dimensions per asymmetric-hashing block (2 is ScaNN's recommendation).
    anisotropic_threshold: anisotropic quantisation threshold (0.2 for unit-norm vectors).
    training_sample_size: rows sampled to train the tree and codebooks (default min(n, 250k)).
    spherical: spherical k-means for the tree (unit-norm centroids). On by default: with plain
        k-means a spread-out cluster gets a short centroid that dot-product routing never
        picks; at 1M synthetic rows that left 3% of queries with recall@100 = 0.
    soar_lambda: SOAR spilling (each row also stored in a second leaf), None = off.
    reorder_dtype: "float32", "bfloat16" or "int8" copy of the corpus used to reorder.
    brute_force_below: corpora smaller than this are scored exactly (a tree does not pay off).
    retrain_fraction: retrain once rows added since training exceed this share (None = never).
    num_threads: search threads for batched queries (0 = all cores).
    """

    num_leaves: int | None = None
    leaves_to_search: int | None = None
    leaves_fraction: float = 0.02
    rows_per_neighbor: float = 100.0
    reorder_k: int | None = None
    reorder_multiplier: float = 2.0
    min_reorder: int = 200
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int | None = None
    spherical: bool = True
    soar_lambda: float | None = None
    reorder_dtype: str = "float32"
    brute_force_below: int = 4096
    retrain_fraction: float | None = 0.5
    num_threads: int = 0

    def __post_init__(self) -> None:
        if self.reorder_dtype not in REORDER_DTYPES:
            raise ValueError(f"ScannConfig.reorder_dtype must be one of {REORDER_DTYPES}, got {self.reorder_dtype!r}")
        if not 0 < self.leaves_fraction <= 1:
            raise ValueError(f"ScannConfig.leaves_fraction must be in (0, 1], got {self.leaves_fraction}")


def default_num_leaves(config: ScannConfig, n: int) -> int:
    """About sqrt(n) leaves, ScaNN's rule of thumb (at least 2, at most n / 8)."""
    if config.num_leaves is not None:
        return int(config.num_leaves)
    return int(max(2, min(round(math.sqrt(n)), n // 8)))


def search_params(config: ScannConfig, n: int, num_leaves: int, k: int) -> tuple[int, int]:
    """(leaves_to_search, reorder_k) for a top-k query against n rows in num_leaves leaves."""
    reorder = config.reorder_k or max(config.min_reorder, int(config.reorder_multiplier * k))
    reorder = min(max(reorder, k), n)
    if config.leaves_to_search is not None:
        leaves = config.leaves_to_search
    else:
        by_fraction = config.leaves_fraction * num_leaves
        by_k = config.rows_per_neighbor * k / (n / num_leaves)  # leaves holding that many rows
        leaves = math.ceil(max(by_fraction, by_k))
    return int(min(max(leaves, 1), num_leaves)), int(reorder)


@register_index
class ScannIndex(Index):
    """ScaNN tree-AH index with exact reordering; cosine via dot product on unit vectors."""

    kind = "scann"

    def __init__(self, config: ScannConfig | None = None) -> None:
        super().__init__()
        self.config = config or ScannConfig()
        self._searcher: Any = None
        self._num_leaves = 0  # 0: brute-force scoring, no tree
        self._trained_rows = 0

    # -- build / add ------------------------------------------------------------------------

    def _config_text(self, n: int, dim: int) -> tuple[str, int]:
        """The ScaNN text config for n rows (and its leaf count; 0 = brute force)."""
        from scann.scann_ops.py import scann_builder, scann_ops_pybind

        shape_only = np.broadcast_to(np.float32(0), (n, dim))  # the builder only reads .shape
        builder = scann_ops_pybind.builder(shape_only, 10, "dot_product")
        reorder = {
            "float32": scann_builder.ReorderType.FLOAT32,
            "bfloat16": scann_builder.ReorderType.BFLOAT16,
            "int8": scann_builder.ReorderType.INT8,
        }[self.config.reorder_dtype]
        if n < self.config.brute_force_below:
            return builder.score_brute_force(reorder).create_config(), 0
        leaves = default_num_leaves(self.config, n)
        sample = self.config.training_sample_size or min(n, 250_000)
        builder = builder.tree(
            num_leaves=leaves,
            num_leaves_to_search=search_params(self.config, n, leaves, 10)[0],
            training_sample_size=sample,
            spherical=self.config.spherical,
            soar_lambda=self.config.soar_lambda,
        )
        builder = builder.score_ah(
            self.config.dims_per_block, anisotropic_quantization_threshold=self.config.anisotropic_threshold
        )
        return builder.reorder(self.config.min_reorder, quantize=reorder).create_config(), leaves

    def _build(self, vectors: np.ndarray) -> None:
        from scann.scann_ops.py import scann_ops_pybind

        text, self._num_leaves = self._config_text(*vectors.shape)
        self._searcher = scann_ops_pybind.create_searcher(vectors, text, self._threads())
        self._trained_rows = vectors.shape[0]
        self._set_threads()

    def _add(self, vectors: np.ndarray) -> None:
        # None positions = append: ScaNN assigns rows count, count+1, ... as we expect.
        self._searcher.searcher.upsert([None] * vectors.shape[0], vectors, max(1, vectors.shape[0]))
        if self.needs_retrain(self.count + vectors.shape[0]):
            self.retrain(self.count + vectors.shape[0])

    def needs_retrain(self, rows: int | None = None) -> bool:
        """Whether the rows added since training exceed `retrain_fraction` of those trained on."""
        rows = self.count if rows is None else rows
        fraction = self.config.retrain_fraction
        return fraction is not None and rows - self._trained_rows > fraction * self._trained_rows

    def retrain(self, rows: int | None = None) -> None:
        """Retrain the tree and codebooks on every row now in the index (defaults re-derived)."""
        rows = self.count if rows is None else rows
        text, leaves = self._config_text(rows, self.dim)
        self._searcher.rebalance(text)
        self._num_leaves, self._trained_rows = leaves, rows

    def _threads(self) -> int:
        return self.config.num_threads or os.cpu_count() or 1

    def _set_threads(self) -> None:
        self._searcher.set_num_threads(self._threads())

    # -- search -----------------------------------------------------------------------------

    @property
    def num_leaves(self) -> int:
        """Leaves of the trained tree (0 when the corpus is small enough for brute force)."""
        return self._num_leaves

    def search_params(self, k: int) -> tuple[int, int]:
        """(leaves_to_search, reorder_k) this index uses for top-k queries."""
        leaves = self._num_leaves
        return search_params(self.config, self.count, leaves, k) if leaves else (0, k)

    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        leaves, reorder = self.search_params(k)
        return self.search_with(queries, k, leaves_to_search=leaves, reorder_k=reorder)

    def search_with(
        self, queries: np.ndarray, k: int, *, leaves_to_search: int, reorder_k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positional search with explicit knobs (for sweeps); queries must be unit-norm float32."""
        leaves = min(max(leaves_to_search, 1), self._num_leaves) if self._num_leaves else -1
        pre = max(reorder_k, k) if self._num_leaves else -1
        if queries.shape[0] == 1:
            rows, scores = self._searcher.search(queries[0], k, pre, leaves)
            rows, scores = rows[None], scores[None]
        else:
            rows, scores = self._searcher.search_batched_parallel(queries, k, pre, leaves)
        rows = np.asarray(rows, np.int64)
        scores = np.asarray(scores, np.float32)
        if rows.shape[1] < k:  # single-query search returns a short row when leaves ran dry
            short = k - rows.shape[1]
            rows = np.pad(rows, ((0, 0), (0, short)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, short)), constant_values=-np.inf)
        # Batched search pads a short row with row 0 and NaN scores.
        rows = np.where(np.isnan(scores), -1, rows)
        return scores, rows

    # -- persistence ------------------------------------------------------------------------

    def _save(self, path: Path) -> dict[str, Any]:
        target = path / SCANN_DIR
        if target.exists():
            for old in target.iterdir():
                old.unlink()
        target.mkdir(exist_ok=True)
        self._searcher.serialize(str(target), relative_path=True)
        return {
            "scann": dataclasses.asdict(self.config),
            "num_leaves": self._num_leaves,
            "trained_rows": self._trained_rows,
        }

    @classmethod
    def _load(cls, path: Path, manifest: dict[str, Any]) -> ScannIndex:
        from scann.scann_ops.py import scann_ops_pybind

        saved = manifest["config"]
        try:
            index = cls(ScannConfig(**saved["scann"]))
            index._num_leaves, index._trained_rows = int(saved["num_leaves"]), int(saved["trained_rows"])
        except (KeyError, TypeError) as err:
            raise IndexFormatError(f"{path / 'manifest.json'}: bad scann config ({err})") from None
        target = path / SCANN_DIR
        if not (target / "scann_assets.pbtxt").is_file():
            raise IndexFormatError(f"{target}: no scann_assets.pbtxt (not a ScaNN directory)")
        index._searcher = scann_ops_pybind.load_searcher(str(target), assets_backcompat_shim=False)
        if index._searcher.size() != manifest["count"]:
            raise IndexFormatError(
                f"{target}: holds {index._searcher.size()} rows but the manifest says {manifest['count']}"
            )
        index._set_threads()
        return index
