"""Issue 14, the embedding rows, through `ff-jax embed` / `ff-jax eval` as a user runs them (the
tiny model and feed of test_embed_job.py on 8 CPU devices).

Row 4: bytes flipped in one finished shard. A rerun of embed checks the shards it would skip,
recomputes the bad one (saying so) and leaves the others alone; eval on the damaged folder fails
labelled as a corrupt file, naming it, and leaves the earlier report in place.
Row 5: a workdir copied, and one moved, resumes: the manifest holds no absolute path, finished
shards are kept, and eval runs in both.
"""

import json
import logging
import os
import shutil

import pytest

from ff_jax import cli
from ff_jax.retrieval.embedding_store import read_tower

from .test_embed_job import run_files  # noqa: F401  (the module-scoped fixture: prepared feed + run.gin)

pytestmark = pytest.mark.slow


def stats(folder):
    """name -> (inode, mtime) of every shard file: unchanged means not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("shard-*"))}


def contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def flip(file, count=64):
    """Inverts `count` bytes in the middle of the file, past the .npy header."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    file.write_bytes(bytes(data))


def test_row4_a_flipped_shard_is_recomputed_and_eval_names_the_corrupt_file(run_files, tmp_path, capsys,  # noqa: F811
                                                                            caplog):
    root, gin_file = run_files
    workdir = tmp_path / "work"
    embed = ["embed", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.EmbedConfig.zero_shot=True"]
    evaluate = ["eval", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.evaluate_run.ks=(5, 10)"]
    assert cli.main(embed) == 0
    assert cli.main(evaluate) == 0
    items = workdir / "embeddings" / "items"
    report = (workdir / "eval" / "metrics_test.json").read_bytes()
    good = contents(items)
    victim = items / "shard-00001.d64.npy"
    flip(victim)
    assert victim.read_bytes() != good[victim.name]

    # eval: refused, labelled by what failed, naming the file; the earlier report is kept.
    capsys.readouterr()
    assert cli.main(evaluate) == 2
    err = capsys.readouterr().err
    assert f"ff-jax eval: corrupt " in err and f"file: {victim}: checksum mismatch" in err, err
    assert "bad gin value" not in err
    assert (workdir / "eval" / "metrics_test.json").read_bytes() == report

    # embed: the bad shard is found, said, and computed again; the good ones are not touched.
    before = stats(items)
    with caplog.at_level(logging.WARNING):
        assert cli.main(embed) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"recomputing shard 1 of {items}: {victim}: checksum mismatch" in w for w in warnings), warnings
    after = stats(items)
    rewritten = {name for name in after if after[name] != before[name]}
    assert rewritten == {"shard-00001.ids.npy", "shard-00001.d16.npy", "shard-00001.d64.npy"}
    assert contents(items) == good  # the recomputed shard is byte-identical to the first run's
    assert not any("members_test" in w for w in warnings)  # the other tower was only verified

    assert cli.main(evaluate) == 0
    assert (workdir / "eval" / "metrics_test.json").read_bytes() == report


@pytest.fixture(scope="module")
def trained_workdir(run_files, tmp_path_factory):  # noqa: F811
    """A workdir holding a step-0 checkpoint of the tiny model (as in test_embed_job)."""
    from ff_jax.data.pipeline import BatchConfig
    from ff_jax.model import presets
    from ff_jax.model.sharding import logical_axis_rules, make_mesh
    from ff_jax.train import loop, step as steps
    from ff_jax.train.checkpointing import Checkpointer
    from ff_jax.data.feed_data import FeedData
    from ff_jax.train.dual_encoder import EncoderConfig
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.optimizer import OptimizerConfig, make_optimizer

    root, _ = run_files
    data = FeedData(data_dir=str(root / "data"), dataset="embed_feed", config="base", prepare=False,
                    tokenizer="byte", batch=BatchConfig(length=256, member_budget=256, item_budget=128))
    mesh, rules = make_mesh(), logical_axis_rules()
    model, _ = loop.build_model(data, EncoderConfig(), InfoNCE(), presets.tiny(vocab_size=512), None, {}, mesh,
                                rules, 0)
    _, state, _ = steps.init_train_state(model, make_optimizer(OptimizerConfig()), 0, 0, mesh, rules)
    workdir = tmp_path_factory.mktemp("trained") / "run"
    ckpt = Checkpointer(workdir / "checkpoints")
    ckpt.save(0, state, force=True)
    ckpt.close()
    return workdir


def test_row5_a_copied_and_a_moved_workdir_resume(run_files, trained_workdir, tmp_path):  # noqa: F811
    _, gin_file = run_files
    original = tmp_path / "original"
    shutil.copytree(trained_workdir, original)

    def embed(workdir, *extra):
        return cli.main(["embed", f"--gin_file={gin_file}", f"--workdir={workdir}", *extra])

    def evaluate(workdir):
        assert cli.main(["eval", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.evaluate_run.ks=(5, 10)",
                         "--gin.evaluate_run.ann=False"]) == 0
        return json.loads((workdir / "eval" / "metrics_test.json").read_text())

    assert embed(original, "--gin.EmbedConfig.towers=('item',)") == 0  # stopped after one tower
    manifest = (original / "embeddings" / "items" / "manifest.json").read_text()
    assert json.loads(manifest)["settings"]["model"] == {"source": "checkpoint", "checkpoints": "checkpoints",
                                                         "step": 0}
    assert str(tmp_path) not in manifest and str(trained_workdir.parent) not in manifest
    items = contents(original / "embeddings" / "items")

    copied, moved = tmp_path / "copied", tmp_path / "elsewhere" / "moved"
    shutil.copytree(original, copied)
    os.renames(original, moved)
    for workdir in (copied, moved):
        kept = stats(workdir / "embeddings" / "items")
        assert embed(workdir) == 0  # resumes: the finished tower is verified, not recomputed
        assert stats(workdir / "embeddings" / "items") == kept
        assert contents(workdir / "embeddings" / "items") == items
        assert len(read_tower(workdir / "embeddings" / "members_test")[0]) == 20
    # eval in both, on the same embeddings: the same figures
    assert evaluate(copied)["by_dim"] == evaluate(moved)["by_dim"]
    assert not original.exists() and (moved / "checkpoints").is_dir()


def test_eval_says_when_embeddings_are_older_than_the_newest_checkpoint(run_files, trained_workdir,  # noqa: F811
                                                                        tmp_path, capsys, caplog):
    """Issue 26 row 5: eval on embeddings of an older checkpoint exited 0 without a word; and embed's
    refusal named `overwrite=True`, not the flag that works."""
    _, gin_file = run_files
    workdir = tmp_path / "run"
    shutil.copytree(trained_workdir, workdir)
    embed = ["embed", f"--gin_file={gin_file}", f"--workdir={workdir}"]
    evaluate = ["eval", f"--gin_file={gin_file}", f"--workdir={workdir}", "--gin.evaluate_run.ks=(5, 10)",
                "--gin.evaluate_run.ann=False"]
    assert cli.main(embed) == 0
    with caplog.at_level(logging.WARNING):
        assert cli.main(evaluate) == 0
    assert not [r for r in caplog.records if "newest checkpoint" in r.getMessage()]  # up to date: nothing said

    # Training went on: a newer checkpoint (a copy of step 0's, sealed as step 5: only its number is read).
    shutil.copytree(workdir / "checkpoints" / "0", workdir / "checkpoints" / "5")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli.main(evaluate) == 0
    said = [r.getMessage() for r in caplog.records if "newest checkpoint" in r.getMessage()]
    assert said == [f"{workdir / 'embeddings' / 'members_test'}: embedded with checkpoint 0, but the newest "
                    "checkpoint is 5: these figures are checkpoint 0's. To evaluate 5: ff-jax embed "
                    f"--workdir={workdir} --gin.EmbedConfig.overwrite=True"], said

    capsys.readouterr()
    assert cli.main([*embed, "--gin.EmbedConfig.checkpoint_step=0", "--gin.EmbedConfig.dtype='float16'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "or --gin.EmbedConfig.overwrite=True to discard them." in err, err
