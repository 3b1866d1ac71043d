"""The one small interface every nearest-neighbour index implements, and its on-disk manifest.

Scores are cosine similarities: the index L2-normalises the corpus and the queries, then ranks by
inner product. An index directory holds the implementation's files plus `manifest.json` (kind,
dim, count, metric, format version, SHA-256 of every file, and a SHA-256 over the manifest's own
fields), so `load_index(dir)` can refuse a truncated or tampered directory, or an edited manifest,
with an error that names the bad file instead of returning silently wrong neighbours.

`search` takes any integer k (Python or numpy), returns an empty [0, k] result for an empty query
batch, and refuses a non-finite query naming its row, the same for every index kind.
"""

from __future__ import annotations

import abc
import json
import operator
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gin
import numpy as np

from ff_jax import files
from ff_jax.files import MANIFEST
from ff_jax.retrieval import filters
from ff_jax.rows import unit_rows

FORMAT_VERSION = 2  # 2: the manifest covers itself (files.SEAL)
METRIC = "cosine"
IDS_FILE = "ids.npy"

# kind -> Index subclass, filled by `register_index` as each implementation's module is imported.
# ff_jax.retrieval's __init__ imports exact and scann_index, and Python runs it before any of its
# modules (this one too), so both kinds are here whenever this module is. ScaNN itself is imported
# inside ScannIndex's methods: loading an exact index never pays for it.
INDEX_KINDS: dict[str, type[Index]] = {}


class IndexFormatError(ValueError):
    """An index directory is missing, empty, corrupt or written by an incompatible version."""


class CorruptIndexFile(IndexFormatError):
    """A file of an index directory is not what `save` wrote: a checksum mismatch, a listed file
    missing, or a manifest edited after it was written."""

    label = "corrupt file"


# ----------------------------------------------------------------------------- input checks


def as_id_array(ids: Sequence[Any] | np.ndarray, expected: int, what: str = "ids") -> np.ndarray:
    """Ids as a 1-D numpy array of str or int64, one per embedding row, all distinct."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.shape[0] != expected:
        raise ValueError(f"{what} has {arr.shape[0]} entries but there are {expected} embedding rows")
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "U":
        pass
    elif arr.dtype.kind == "O" and all(isinstance(x, str) for x in arr):
        arr = arr.astype(str)
    elif arr.size:
        raise ValueError(f"{what} must be strings or integers, got dtype {arr.dtype}")
    else:
        arr = arr.astype(str)  # empty
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        raise ValueError(f"{what} contains duplicates, e.g. {uniq[counts > 1][:5].tolist()}")
    return arr


def normalize_rows(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """ff_jax.rows.unit_rows of vectors for this index, which must be `dim` wide when given."""
    arr = np.asarray(x)
    if dim is not None and arr.ndim == 2 and arr.shape[1] != dim:
        raise ValueError(
            f"dimension mismatch: {what} have dimension {arr.shape[1]} but the index holds "
            f"{dim}-d embeddings"
        )
    return unit_rows(arr, what)


# ----------------------------------------------------------------------------- the interface


class Index(abc.ABC):
    """Cosine kNN over a corpus of (id, embedding) rows.

    Subclasses implement the positional core (`_build`, `_add`, `_search_positions`, `_save`,
    `_load`); this class owns the ids, the input checks, the exclusion filter and the manifest.
    """

    kind: ClassVar[str]

    def __init__(self) -> None:
        self._ids: np.ndarray | None = None
        self._dim: int | None = None
        self._id_set: set[Any] | None = None  # for add()'s duplicate check

    # -- public API -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        self._require_built()
        return int(self._dim)  # type: ignore[arg-type]

    @property
    def count(self) -> int:
        return 0 if self._ids is None else int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        self._require_built()
        return self._ids  # type: ignore[return-value]

    def build(self, embeddings: Any, ids: Sequence[Any] | np.ndarray) -> Index:
        """Index `embeddings` [N, D] under `ids` (N distinct str or int), replacing any contents."""
        vectors = normalize_rows(embeddings, "embeddings")
        if vectors.shape[0] == 0:
            raise ValueError("embeddings is empty: an index needs at least one row")
        id_array = as_id_array(ids, vectors.shape[0])
        self._build(vectors)
        self._ids, self._dim, self._id_set = id_array, vectors.shape[1], None
        return self

    def add(self, embeddings: Any, ids: Sequence[Any] | np.ndarray) -> Index:
        """Make new items searchable without a full rebuild. Ids must be new."""
        self._require_built()
        vectors = normalize_rows(embeddings, "embeddings", dim=self._dim)
        if vectors.shape[0] == 0:
            return self
        new_ids = as_id_array(ids, vectors.shape[0])
        if new_ids.dtype.kind != self._ids.dtype.kind:  # type: ignore[union-attr]
            raise ValueError(f"ids are {new_ids.dtype} but the index holds {self._ids.dtype} ids")
        if self._id_set is None:  # built on the first add: O(new ids) checks afterwards
            self._id_set = set(self._ids.tolist())  # type: ignore[union-attr]
        clash = [i for i in new_ids.tolist() if i in self._id_set]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]}")
        self._add(vectors)
        self._ids = np.concatenate([self._ids, new_ids])
        self._id_set.update(new_ids.tolist())
        return self

    def search(
        self,
        queries: Any,
        k: int,
        exclude: Sequence[Collection[Any] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine: (scores float32 [Q, k], ids [Q, k]), best first.

        `exclude[q]` holds ids query q must not get back (e.g. items the member already saw); the
        index over-fetches so k results remain whenever the corpus has k non-excluded items.
        Missing slots (only possible with `exclude`) hold score -inf and id "" (str ids) or -1.
        k may be any integer type (numpy's too); no queries give empty [0, k] arrays.
        """
        self._require_built()
        k = self._check_k(k)
        q = np.asarray(queries)
        if q.ndim == 1 and q.size == 0:  # an empty list of queries: no width to check
            q = q.reshape(0, self.dim)
        q = normalize_rows(q, "queries", dim=self._dim)
        if len(q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), self._ids.dtype)  # type: ignore[union-attr]
        if exclude is None:
            return self._search_ids(q, k)
        return filters.filtered_search(self, q, k, seen=filters.per_query_lists(exclude, len(q), "exclude"))

    def save(self, directory: str | Path) -> Path:
        """Write the index and its manifest to `directory` (created; existing files replaced)."""
        self._require_built()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST).unlink(missing_ok=True)  # a half-written save must not look valid
        np.save(path / IDS_FILE, self._ids, allow_pickle=False)
        extra = self._save(path)
        manifest = {
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "dim": self.dim,
            "count": self.count,
            "metric": METRIC,
            "ids_dtype": str(self._ids.dtype),  # type: ignore[union-attr]
            "config": extra,
            "checksums": files.checksums(path),
        }
        files.write_manifest(path / MANIFEST, files.sealed(manifest))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Index:
        """Read an index written by `save`; checks the manifest and checksums first."""
        path = Path(directory)
        manifest = read_manifest(path)
        if manifest["kind"] != cls.kind:
            raise IndexFormatError(
                f"{path / MANIFEST}: holds a '{manifest['kind']}' index, not '{cls.kind}'"
            )
        ids = np.load(path / IDS_FILE, allow_pickle=False)
        if ids.shape != (manifest["count"],):
            raise IndexFormatError(
                f"{path / IDS_FILE}: {ids.shape} ids but the manifest says count={manifest['count']}"
            )
        index = cls._load(path, manifest)
        index._ids, index._dim = ids, int(manifest["dim"])
        return index

    @property
    def pad_id(self) -> Any:
        """The id that fills result slots a filter could not fill."""
        return -1 if self._ids is not None and self._ids.dtype.kind == "i" else ""

    # -- for subclasses ---------------------------------------------------------------------

    @abc.abstractmethod
    def _build(self, vectors: np.ndarray) -> None:
        """Replace the contents with unit-norm float32 `vectors` [N, D]."""

    @abc.abstractmethod
    def _add(self, vectors: np.ndarray) -> None:
        """Append unit-norm rows; they get positions count, count+1, ..."""

    @abc.abstractmethod
    def _search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [Q, k], positions int [Q, k]); positions < 0 mark empty slots."""

    @abc.abstractmethod
    def _save(self, path: Path) -> dict[str, Any]:
        """Write implementation files into `path`; return the config to record in the manifest."""

    @classmethod
    @abc.abstractmethod
    def _load(cls, path: Path, manifest: dict[str, Any]) -> Index:
        """Recreate the implementation from `path` (ids and dim are restored by `load`)."""

    # -- helpers ----------------------------------------------------------------------------

    def _require_built(self) -> None:
        if self._ids is None:
            raise RuntimeError(f"the {self.kind} index is empty: call build() or load() first")

    def _check_k(self, k: Any) -> int:
        """k as a Python int (numpy integers too, via operator.index), checked against the corpus."""
        try:
            value = None if isinstance(k, bool) else operator.index(k)
        except TypeError:
            value = None
        if value is None or value <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if value > self.count:
            raise ValueError(f"k={value} is larger than the corpus ({self.count} items)")
        return value

    def _search_ids(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = self._search_positions(q, k)
        scores = np.asarray(scores, np.float32)
        positions = np.asarray(positions, np.int64)
        empty = positions < 0  # an approximate index may return fewer than k: mark, never crash
        if empty.any():
            scores = np.where(empty, np.float32(-np.inf), scores)
            return scores, np.where(empty, self.pad_id, self._ids[np.maximum(positions, 0)])
        return scores, self._ids[positions]  # type: ignore[index]


# ----------------------------------------------------------------------------- manifest


_REQUIRED = {"kind": str, "version": int, "dim": int, "count": int, "metric": str, "checksums": dict}


def read_manifest(path: Path, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an index directory; raises IndexFormatError naming the problem."""
    if not path.exists():
        raise IndexFormatError(f"index directory {path} does not exist")
    if not path.is_dir():
        raise IndexFormatError(f"{path} is a file, not an index directory")
    file = path / MANIFEST
    if not file.exists():
        what = "is empty" if not any(path.iterdir()) else f"has no {MANIFEST}"
        raise IndexFormatError(f"index directory {path} {what} (write one with Index.save)")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise IndexFormatError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{file}: expected a JSON object")
    for field, typ in _REQUIRED.items():
        if not isinstance(manifest.get(field), typ):
            raise IndexFormatError(f"{file}: field '{field}' is missing or not a {typ.__name__}")
    if manifest["version"] > FORMAT_VERSION:
        raise IndexFormatError(
            f"{file}: format version {manifest['version']} is newer than this ff_jax reads "
            f"({FORMAT_VERSION})"
        )
    if manifest["metric"] != METRIC:
        raise IndexFormatError(f"{file}: metric '{manifest['metric']}' is not '{METRIC}'")
    if verify:
        files.check_seal(file, manifest, CorruptIndexFile)
        for name, expected in manifest["checksums"].items():
            files.verify(path / name, expected, CorruptIndexFile)
        if IDS_FILE not in manifest["checksums"]:
            raise IndexFormatError(f"{file}: checksums do not cover {IDS_FILE}")
    return manifest


def register_index(cls: type[Index]) -> type[Index]:
    """Class decorator: makes `cls.kind` known to `create_index`, `load_index` and `ff-jax eval`
    (`evaluate_run.indexes`). A kind names one class; a second class under it is refused."""
    known = INDEX_KINDS.get(cls.kind)
    if known is not None and known is not cls:
        raise ValueError(f"index kind '{cls.kind}' is already {known.__module__}.{known.__qualname__}")
    INDEX_KINDS[cls.kind] = cls
    return cls


@gin.configurable
def create_index(kind: str = "scann") -> Index:
    """A new, empty index of `kind` (a key of INDEX_KINDS); its config comes from gin bindings
    (`ScannConfig.*`, `ExactConfig.*`). The entry point for CLI jobs."""
    return _index_class(kind, "create_index")()


def _index_class(kind: str, where: str) -> type[Index]:
    if kind not in INDEX_KINDS:
        raise IndexFormatError(f"{where}: unknown index kind '{kind}' (known: {sorted(INDEX_KINDS)})")
    return INDEX_KINDS[kind]


def load_index(directory: str | Path) -> Index:
    """Load any index written by `Index.save`, dispatching on the manifest's `kind`."""
    path = Path(directory)
    kind = read_manifest(path, verify=False)["kind"]
    return _index_class(kind, str(path / MANIFEST)).load(path)

