"""Exact kNN: parity with numpy, chunked/streamed == resident, sharded over 8 devices == one."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from ff_jax.retrieval import ExactConfig, ExactIndex, load_index

N, D, Q, K = 3001, 24, 19, 40  # N prime-ish so no chunk or shard divides it evenly


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((N, D)).astype(np.float32)
    queries = rng.standard_normal((Q, D)).astype(np.float32)
    ids = np.array([f"item{i}" for i in range(N)])
    return corpus, queries, ids


def numpy_top_k(corpus, queries, k):
    c = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ c.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def test_float32_equals_numpy(data):
    corpus, queries, ids = data
    scores, found = ExactIndex().build(corpus, ids).search(queries, K)
    ref_scores, ref_rows = numpy_top_k(corpus, queries, K)
    np.testing.assert_array_equal(found, ids[ref_rows])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_streamed_chunks_equal_one_resident_chunk(data):
    corpus, queries, ids = data
    whole = ExactIndex(ExactConfig(chunk_rows=N)).build(corpus, ids)
    streamed = ExactIndex(ExactConfig(chunk_rows=250, query_batch=4, max_resident_bytes=0)).build(corpus, ids)
    assert whole.resident and not streamed.resident
    a, b = whole.search(queries, K), streamed.search(queries, K)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_k_larger_than_a_chunk_is_exact(data):
    corpus, queries, ids = data
    _, found = ExactIndex(ExactConfig(chunk_rows=16)).build(corpus, ids).search(queries, 100)
    np.testing.assert_array_equal(found, ids[numpy_top_k(corpus, queries, 100)[1]])


def test_sharded_over_8_devices_equals_single_device(data, mesh):
    corpus, queries, ids = data
    single = ExactIndex(ExactConfig(chunk_rows=1000)).build(corpus, ids)
    sharded = ExactIndex(ExactConfig(chunk_rows=1000), mesh=mesh).build(corpus, ids)
    chunk = sharded._chunk(0)
    assert len(chunk.sharding.device_set) == 8
    a, b = single.search(queries, K), sharded.search(queries, K)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_on_mesh_moves_a_loaded_index_onto_the_mesh(data, mesh, tmp_path):
    corpus, queries, ids = data
    ExactIndex(ExactConfig(chunk_rows=1000)).build(corpus, ids).save(tmp_path)
    sharded = load_index(tmp_path).on_mesh(mesh)
    np.testing.assert_array_equal(sharded.search(queries, K)[1], ids[numpy_top_k(corpus, queries, K)[1]])


def test_mesh_without_the_data_axis_is_rejected(mesh):
    with pytest.raises(ValueError, match="no data axis 'rows'"):
        ExactIndex(ExactConfig(data_axis="rows"), mesh=mesh)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_storage_stays_close_to_float32(data, dtype):
    corpus, queries, ids = data
    index = ExactIndex(ExactConfig(dtype=dtype)).build(corpus, ids)
    scores, found = index.search(queries, K)
    ref_scores, ref_rows = numpy_top_k(corpus, queries, K)
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, ids[ref_rows])])
    assert overlap > 0.9
    np.testing.assert_allclose(scores, ref_scores, atol=2e-2 if dtype == "bfloat16" else 3e-3)
    assert index.nbytes == N * D * 2


def test_add_then_search_equals_a_fresh_build(data):
    corpus, queries, ids = data
    grown = ExactIndex().build(corpus[:10], ids[:10])  # chunks grow 16 -> 1024 -> 4096 rows
    grown.add(corpus[10:1000], ids[10:1000]).add(corpus[1000:], ids[1000:])
    fresh = ExactIndex().build(corpus, ids)
    assert grown.count == N
    np.testing.assert_array_equal(grown.search(queries, K)[1], fresh.search(queries, K)[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_then_load_gives_identical_results(data, tmp_path, dtype):
    corpus, queries, ids = data
    index = ExactIndex(ExactConfig(dtype=dtype)).build(corpus, ids)
    index.save(tmp_path)
    loaded = load_index(tmp_path)
    assert isinstance(loaded, ExactIndex) and loaded.config == index.config
    a, b = index.search(queries, K), loaded.search(queries, K)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_integer_ids_round_trip(data, tmp_path):
    corpus, queries, _ = data
    ids = np.arange(N) * 7
    ExactIndex().build(corpus, ids).save(tmp_path)
    _, found = load_index(tmp_path).search(queries, 5)
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, ids[numpy_top_k(corpus, queries, 5)[1]])
