"""Issue 14, the index rows: the probes as an attacker or a careless caller would run them.

Row 9: a numpy integer k, an empty query batch and a non-finite query, against every index kind
in ff_jax.retrieval (ScaNN with a real k-means tree). Row 10: a ScaNN manifest edited by hand
(num_leaves changed, a checksum entry dropped) is refused by name, and the directory is left as
it was: putting the original manifest back loads the same index.
"""

import json

import numpy as np
import pytest

from ff_jax.files import SEAL
from ff_jax.retrieval import IndexFormatError, ScannIndex, create_index, load_index
from ff_jax.retrieval.index import INDEX_KINDS, CorruptIndexFile

N, DIM = 5000, 16  # above ScannConfig.brute_force_below: ScaNN trains a real tree


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(14)
    return rng.standard_normal((N, DIM)).astype(np.float32), np.array([f"item{i}" for i in range(N)])


@pytest.fixture(scope="module", params=sorted(INDEX_KINDS))
def index(request, corpus):
    return create_index(request.param).build(*corpus)


@pytest.fixture(scope="module")
def scann_dir(corpus, tmp_path_factory):
    index = ScannIndex().build(*corpus)
    assert index.num_leaves > 2  # a tree: num_leaves changes results
    return index.save(tmp_path_factory.mktemp("scann") / "index")


def exact_top_k(corpus, queries, k):
    """The reference: cosine by numpy, best first."""
    vectors, ids = corpus
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.mark.parametrize("k", [np.int64(5), np.int32(5), np.uint8(5)])
def test_row9_a_numpy_integer_k_is_an_integer(index, corpus, k):
    queries = corpus[0][:3] + 0.01
    scores, ids = index.search(queries, k)
    assert ids.shape == scores.shape == (3, 5)
    as_int = index.search(queries, 5)  # the same search with a Python int
    assert (ids == as_int[1]).all() and (scores == as_int[0]).all()
    expected_scores, expected_ids = exact_top_k(corpus, queries, 5)
    assert (ids[:, 0] == corpus[1][:3]).all()  # each query's own row comes first
    if index.kind == "exact":
        assert (ids == expected_ids).all()
    np.testing.assert_allclose(scores[:, 0], expected_scores[:, 0], atol=1e-5)
    # the same through the exclusion filter, which searches again with its own k
    _, filtered = index.search(queries, k, exclude=[[i] for i in corpus[1][:3]])
    assert filtered.shape == (3, 5) and not (filtered == corpus[1][:3, None]).any()
    # integers only: a bool or a float that happens to be whole is still refused
    for bad in (True, np.float64(5), 5.0):
        with pytest.raises(ValueError, match="k must be a positive integer, got"):
            index.search(queries, bad)


@pytest.mark.parametrize("queries", [np.zeros((0, DIM), np.float32), [], np.zeros((0, DIM), np.float64)],
                         ids=["float32", "empty list", "float64"])
def test_row9_an_empty_query_batch_gives_an_empty_result(index, queries):
    for exclude in (None, []):
        scores, ids = index.search(queries, np.int64(7), exclude=exclude)
        assert scores.shape == ids.shape == (0, 7)
        assert scores.dtype == np.float32 and ids.dtype == index.ids.dtype


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_row9_a_non_finite_query_is_refused_naming_its_row(index, corpus, bad):
    queries = corpus[0][:4].copy()
    queries[2, 7] = bad
    with pytest.raises(ValueError, match="queries row 2 contains NaN or inf"):
        index.search(queries, 5)


def edited(directory, edit):
    """Applies `edit` to the manifest dict and writes it back (as a person with an editor would)."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def test_row10_an_edited_scann_manifest_is_refused_and_the_index_is_kept(scann_dir, corpus):
    original = (scann_dir / "manifest.json").read_text()
    files_before = {p: p.read_bytes() for p in scann_dir.rglob("*") if p.is_file()}
    queries = corpus[0][:20] + 0.05
    before = load_index(scann_dir).search(queries, 10)

    def more_leaves(m):
        m["config"]["num_leaves"] += 7

    def dropped_checksum(m):
        del m["checksums"][next(name for name in m["checksums"] if name.startswith("scann/"))]

    def no_seal(m):
        del m[SEAL]

    for edit in (more_leaves, dropped_checksum, no_seal):
        edited(scann_dir, edit)
        for load in (load_index, ScannIndex.load):
            with pytest.raises(CorruptIndexFile, match=f"{scann_dir / 'manifest.json'}: "
                                                       f"(edited after it was written|has no {SEAL})") as err:
                load(scann_dir)
            assert isinstance(err.value, IndexFormatError) and err.value.label == "corrupt file"
        (scann_dir / "manifest.json").write_text(original)

    # Nothing was rewritten or removed, and the original manifest loads the same index again.
    assert {p: p.read_bytes() for p in scann_dir.rglob("*") if p.is_file()} == files_before
    after = load_index(scann_dir).search(queries, 10)
    assert (after[1] == before[1]).all()
    np.testing.assert_array_equal(after[0], before[0])

