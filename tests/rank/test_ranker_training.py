"""Ranker training through the real CLI (`ff-jax rank-train`) on the committed Parquet tables:
a process killed with SIGKILL, resumed, stopped with SIGTERM (which saves that step) and resumed
again logs exactly the uninterrupted losses; the rows it trains on hold what RankerData promises."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.xdist_group("train_subprocess"), pytest.mark.slow]

TABLES = Path(__file__).resolve().parents[1] / "data" / "tables_parquet"
STEPS = 8


def _env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # later processes load the first one's compile
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _command(data_dir: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "ff_jax.cli", "rank-train", "--gin_file=ranker/tiny_smoke.gin",
            "--gin.DATASET=tables", f"--gin.TABLES={TABLES}", "--gin.TablesOptions.rating_threshold=4",
            "--gin.TablesOptions.numeric_ids=True",
            f"--gin.DATA_DIR={data_dir}", f"--workdir={workdir}", f"--gin.STEPS={STEPS}",
            "--gin.CheckpointConfig.save_every=2", "--gin.train_ranker.progress=False",
            "--gin.train_ranker.tensorboard=False"]


def _logged(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_until(cmd, env, workdir: Path, step: int, sig) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if any(r["step"] >= step for r in _logged(workdir)):
            proc.send_signal(sig)
            break
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.wait(timeout=300)
    return proc


def test_sigkill_and_sigterm_resume_reproduce_the_uninterrupted_ranker_losses(tmp_path):
    env, data_dir = _env(tmp_path / "jax_cache"), tmp_path / "tfds"
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    done = subprocess.run(_command(data_dir, reference_dir), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = {r["step"]: r["loss"] for r in _logged(reference_dir)}
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert len(set(reference.values())) == STEPS  # a real curve, not a constant
    assert json.loads((reference_dir / "run.json").read_text())["kind"] == "ranker"

    killed = _run_until(_command(data_dir, run_dir), env, run_dir, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    stopped = _run_until(_command(data_dir, run_dir), env, run_dir, 5, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr.read()[-3000:]
    done = subprocess.run(_command(data_dir, run_dir), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    records = _logged(run_dir)
    assert sorted({r["step"] for r in records}) == list(range(1, STEPS + 1))
    assert len(records) > STEPS  # some steps were replayed after the kill
    for record in records:
        np.testing.assert_allclose(record["loss"], reference[record["step"]], rtol=1e-6,
                                   err_msg=f"step {record['step']}")


def test_ranker_rows_hold_the_engaged_item_then_impressed_then_negatives(tmp_path):
    """One batch decoded back: each row is its member's prompt, then the engaged item, its
    impressed-not-engaged items and distinct negatives, each followed by the question."""
    from ff_jax import gin_cli
    from ff_jax.data.pipeline import as_text
    from ff_jax.model.tokenizer import byte_tokenizer
    from ff_jax.rank.data import RankerData
    from ff_jax.data.feed_data import FeedData

    import ff_jax.rank.evaluate  # noqa: F401  (registers the configurables the run file binds)

    bindings = ["DATASET='tables'", f"TABLES='{TABLES}'", "TablesOptions.rating_threshold=4",
                "TablesOptions.numeric_ids=True", f"DATA_DIR='{tmp_path}'"]
    with gin_cli.configured(["ranker/tiny_smoke.gin"], bindings):
        data = RankerData(feed=FeedData())
    tokenizer = byte_tokenizer()
    batch = next(data.train_iterator(tokenizer, num_shards=2, seed=3))
    k = data.candidates
    assert batch.tokens.shape == (2, data.members_per_shard, data.row_length) and batch.last.shape[-1] == k
    sources, fmt, _ = data.feed.open_dataset("tables")
    records = sources["train"]
    member_tokens, item_tokens, _ = data.prompt_tokenizers(tokenizer, fmt)
    by_context = {}  # a row's decoded context -> the training records of that member prompt
    for i in range(len(records)):
        by_context.setdefault(tokenizer.decode(list(member_tokens.member(records[i]))), []).append(records[i])
    item_ids, prompts = data.corpus()
    as_candidate = {tokenizer.decode(list(ids)): item for item, ids in zip(item_ids, item_tokens.items(prompts))}
    assert len(as_candidate) == len(item_ids)  # each item's candidate text names it alone
    question = data.ranker.question
    for n in range(2):
        for r in range(data.members_per_shard):
            seg = batch.segment_ids[n, r]
            pieces = [tokenizer.decode(batch.tokens[n, r][seg == s].tolist()) for s in range(1, k + 2)]
            assert all(p.endswith(question) for p in pieces[1:])
            chosen = [as_candidate[p[: -len(question)]] for p in pieces[1:]]  # KeyError: not an item's text
            assert len(set(chosen)) == k  # distinct candidates
            (record,) = by_context[pieces[0]]  # the row's member: one record of this context
            impressed = [as_text(i) for i in record["negative_ids"]][: data.impressed]
            # In order: the record's engaged item, its impressed items, then other items as negatives.
            assert chosen[: 1 + len(impressed)] == [as_text(record["positive_id"]), *impressed]
            assert not set(chosen[1 + len(impressed):]) & {as_text(record["positive_id"]), *impressed}
            np.testing.assert_array_equal(batch.labels[n, r], [1.0] + [0.0] * (k - 1))
            positions = batch.positions[n, r]
            context_length = int(np.sum(seg == 1))
            for s in range(2, k + 2):
                assert positions[seg == s][0] == context_length  # each candidate continues the context
            assert set(np.unique(batch.prefix_segments[n, r][seg > 1])) == {1}
