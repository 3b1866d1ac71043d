"""Bad input gets a clear error that names the problem (field, file, shape)."""

import json

import numpy as np
import pytest

from ff_jax.retrieval import ExactIndex, IndexFormatError, load_index


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(0)
    return ExactIndex().build(rng.standard_normal((50, 8)), [f"i{i}" for i in range(50)])


@pytest.fixture
def saved(index, tmp_path):
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_query_dimension_mismatch_names_both_dimensions(index):
    with pytest.raises(ValueError, match="queries have dimension 6 but the index holds 8-d"):
        index.search(np.ones((2, 6)), 3)


def test_add_dimension_mismatch(index):
    with pytest.raises(ValueError, match="embeddings have dimension 9 but the index holds 8-d"):
        index.add(np.ones((1, 9)), ["new"])


def test_k_larger_than_corpus(index):
    with pytest.raises(ValueError, match=r"k=51 is larger than the corpus \(50 items\)"):
        index.search(np.ones((1, 8)), 51)


@pytest.mark.parametrize("k", [0, -3, 2.5])
def test_k_must_be_a_positive_integer(index, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones((1, 8)), k)


def test_bad_embeddings_are_named():
    with pytest.raises(ValueError, match="embeddings row 1 has zero norm"):
        ExactIndex().build(np.array([[1.0, 0.0], [0.0, 0.0]]), ["a", "b"])
    with pytest.raises(ValueError, match="embeddings row 0 contains NaN"):
        ExactIndex().build(np.array([[np.nan, 1.0]]), ["a"])
    with pytest.raises(ValueError, match="2-D"):
        ExactIndex().build(np.ones(4), ["a"])
    with pytest.raises(ValueError, match="embeddings is empty"):
        ExactIndex().build(np.ones((0, 4)), [])


def test_bad_ids_are_named(index):
    with pytest.raises(ValueError, match="ids has 1 entries but there are 2 embedding rows"):
        ExactIndex().build(np.ones((2, 3)), ["a"])
    with pytest.raises(ValueError, match=r"duplicates, e.g. \['a'\]"):
        ExactIndex().build(np.ones((2, 3)), ["a", "a"])
    with pytest.raises(ValueError, match=r"already in the index: \['i3'\]"):
        index.add(np.ones((1, 8)), ["i3"])
    with pytest.raises(ValueError, match="ids are int64 but the index holds <U3 ids"):
        index.add(np.ones((1, 8)), [7])


def test_search_before_build():
    with pytest.raises(RuntimeError, match="index is empty: call build"):
        ExactIndex().search(np.ones((1, 3)), 1)


def test_missing_directory(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        load_index(tmp_path / "nope")


def test_empty_directory(tmp_path):
    with pytest.raises(IndexFormatError, match="is empty"):
        load_index(tmp_path)


def test_directory_without_manifest(saved):
    (saved / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="has no manifest.json"):
        load_index(saved)


def test_manifest_that_is_not_json(saved):
    (saved / "manifest.json").write_text('{"kind": "exact",\n oops}')
    with pytest.raises(IndexFormatError, match=r"manifest.json: not valid JSON \(line 2"):
        load_index(saved)


def test_manifest_missing_a_field(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    del manifest["dim"]
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="field 'dim' is missing"):
        load_index(saved)


def test_unknown_kind_and_newer_version(saved):
    manifest = json.loads((saved / "manifest.json").read_text())
    (saved / "manifest.json").write_text(json.dumps({**manifest, "kind": "annoy"}))
    with pytest.raises(IndexFormatError, match="unknown index kind 'annoy'"):
        load_index(saved)
    (saved / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(IndexFormatError, match="format version 99 is newer"):
        load_index(saved)


def test_corrupt_file_fails_its_checksum(saved):
    data = bytearray((saved / "corpus.npy").read_bytes())
    data[-1] ^= 0xFF
    (saved / "corpus.npy").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=r"corpus.npy: checksum mismatch"):
        load_index(saved)


def test_deleted_file_is_named(saved):
    (saved / "ids.npy").unlink()
    with pytest.raises(IndexFormatError, match=r"ids.npy: listed in the manifest but missing"):
        load_index(saved)


def test_loading_with_the_wrong_class(saved):
    from ff_jax.retrieval import ScannIndex

    with pytest.raises(IndexFormatError, match="holds a 'exact' index, not 'scann'"):
        ScannIndex.load(saved)


def test_create_index_takes_kind_and_knobs_from_gin():
    import gin

    from ff_jax.retrieval import ScannIndex, create_index

    with gin.unlock_config():
        gin.parse_config(["create_index.kind = 'exact'", "ExactConfig.dtype = 'bfloat16'"])
    index = create_index()  # tests/conftest.py clears gin afterwards
    assert isinstance(index, ExactIndex) and index.config.dtype == "bfloat16"
    assert isinstance(create_index("scann"), ScannIndex)
    with pytest.raises(IndexFormatError, match="unknown index kind 'faiss'"):
        create_index("faiss")
