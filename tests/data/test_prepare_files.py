"""Local workers read the frame from one Arrow IPC file and send their chunks back as Arrow buffers, and the
preparing process renders the chunks no worker has started: the records
are those of the text-record path (feed_world tiny covers every kind of field: dates, numbers through
the quantiser, text, categories), and no scratch file outlives the preparation."""

import pandas as pd
import pyarrow as pa
import pytest
from record_digests import GOLDEN, digests

from ff_jax.data import prepared as tb
from ff_jax.data.prepare_engine import ChunkMapper, PrepareConfig

pytestmark = pytest.mark.slow


def test_worker_files_write_the_records_of_the_text_path(tmp_path):
    tb.build("feed_world", "tiny", tmp_path, PrepareConfig(workers=2, chunk=700))  # 6 item chunks, 1 member chunk
    for dataset in ("feed_world", "feed_world_corpus"):
        assert digests(tb.open_prepared(tmp_path, dataset, "tiny")[0]) == GOLDEN[f"{dataset}/tiny"], dataset
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".arrow"
            and p.stem not in ("items", "members", "timeline", "train", "validation", "test")] == []
    assert not list(tmp_path.rglob(".scratch"))


class Doubles:
    schema = pa.schema([("x", pa.int64())])

    def __call__(self, chunk: pd.DataFrame) -> pa.RecordBatch:
        return pa.record_batch([pa.array(chunk["x"].to_numpy() * 2)], schema=self.schema)


class Fails(Doubles):
    def __call__(self, chunk: pd.DataFrame) -> pa.RecordBatch:
        if chunk["x"].iloc[0] >= 20:
            raise ValueError(f"row {chunk['x'].iloc[0]} refused")
        return super().__call__(chunk)


def test_chunks_come_back_in_order_and_a_failure_reaches_the_caller(tmp_path):
    frame = pd.DataFrame({"x": range(50)})
    with ChunkMapper(PrepareConfig(workers=2, chunk=7), tmp_path / "scratch") as mapper:
        assert [v for b in mapper.map(Doubles(), frame) for v in b.column(0).to_pylist()] == list(range(0, 100, 2))
        with pytest.raises(ValueError, match=r"row (2[1-9]|[34]\d) refused"):  # chunks may run in any order
            list(mapper.map(Fails(), frame))
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_consumed_chunk_is_let_go(tmp_path):
    """The preparing process holds a few chunks at a time, not every chunk rendered so far: the bytes
    it holds (Arrow's pool for chunks rendered here, Python's allocator, traced, for those unpickled
    from the worker) stay under 8 chunks' worth (AHEAD rendered here, the one read, those the worker
    finished) while 24 chunks pass. Taking the last chunk not started held nearly all 24."""
    import tracemalloc

    rows = 20_000  # 160 KB a chunk of int64
    frame = pd.DataFrame({"x": range(24 * rows)})
    chunk_bytes, held = rows * 8, []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes()
        with ChunkMapper(PrepareConfig(workers=2, chunk=rows), tmp_path / "scratch") as mapper:
            for batch in mapper.map(Doubles(), frame):
                assert batch.num_rows == rows
                del batch
                held.append(tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - base)
    finally:
        tracemalloc.stop()
    assert max(held) <= 8 * chunk_bytes, [round(h / chunk_bytes, 1) for h in held]
