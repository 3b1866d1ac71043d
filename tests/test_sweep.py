"""`ff-jax sweep`: sweep files, launch commands, the runner end to end with resume, the summary."""

import contextlib
import io
import json
import math
import shlex
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ff_jax import cli, sweep
from ff_jax.files import sha256_file
from ff_jax.gin_cli import CONFIGS_DIR
from ff_jax.retrieval.embedding_store import read_tower

pytestmark = pytest.mark.xdist_group("sweep")

TINY = """
description = "two tiny variants"
gin_file = "experiments/compact_feed_world.gin"
prepare = "compact_feed_world"
seeds = [0]

[bindings]
STEPS = 3
"OptimizerConfig.warmup_steps" = 1
"FeedData.validation_members" = 16

[eval]
"evaluate_run.ann" = false

[variants.mean]
"EncoderConfig.pooling" = "mean"

[variants.last_n]
"EncoderConfig.pooling" = "last_n"
"EncoderConfig.last_n" = 4
"""


def _write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _main(capsys, *argv):
    code = cli.main(["sweep", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, local_ray):
    """TINY run once, sequentially, for this module: the end-to-end test and the --ray test (which
    compares Ray's summary with this one) share it and its prepared data. The first call's output
    and summary are kept as they were, before any test reruns a run. It runs after Ray started, as
    the --ray run does, so both see the same process environment."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    path = _write(root, TINY.replace("seeds = [0]\n", "seeds = [0]\nresources = { cpus = 1, gpus = 0 }\n"))
    flags = [f"--sweep={path}", f"--data_dir={root / 'tfds'}", f"--workdir={root / 'runs'}",
             f"--results_dir={root / 'results'}"]
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["sweep", *flags])
    seconds = time.monotonic() - start
    assert code == 0, err.getvalue()
    results = root / "results" / "s"
    return SimpleNamespace(root=root, path=path, flags=flags, out=out.getvalue(), seconds=seconds, results=results,
                           summary=pd.read_csv(results / "summary.csv"), md=(results / "summary.md").read_text())


@pytest.mark.slow
def test_two_variants_run_end_to_end_then_only_the_removed_run_reruns(tiny_sweep, capsys):
    tmp_path, flags, results, table = tiny_sweep.root, tiny_sweep.flags, tiny_sweep.results, tiny_sweep.summary
    assert "2 ran, 0 already finished, 0 failed" in tiny_sweep.out
    assert table["variant"].tolist() == ["mean", "last_n"] and table["seed"].tolist() == [0, 0]
    assert table["bind:EncoderConfig.pooling"].tolist() == ["mean", "last_n"]
    assert table["train/steps"].tolist() == [3, 3]
    # Wall times: each stage's seconds as the run's record holds them (rounded to 0.1 s), each a part
    # of the sweep call's own wall time, measured here; nothing about speed.
    stages = {}
    for variant in ("mean", "last_n"):
        record = json.loads((tmp_path / "runs" / "s" / f"{variant}_seed0" / sweep.RECORD).read_text())["seconds"]
        row = table[table["variant"] == variant].iloc[0]
        for stage in ("train", "embed", "eval"):
            assert row[f"{stage}_seconds"] == pytest.approx(record[stage], abs=0.051), (variant, stage)
            assert record[stage] > 0
        stages[variant] = sum(record.values())
    assert sum(stages.values()) <= tiny_sweep.seconds
    # Every metric of the eval report, by cohort and width, is in the row, with the eval's own value.
    recall = {}
    for run in ("mean_seed0", "last_n_seed0"):
        report = json.loads((tmp_path / "runs" / "s" / run / "eval" / "metrics_test.json").read_text())
        row = table[table["variant"] == run.rsplit("_seed", 1)[0]].iloc[0]
        width = report["width"]
        for cohort in ("all", "new", "established"):
            for metric in ("recall@10", "recall@100", "ndcg@10", "mrr"):
                assert row[f"test/{metric}/{cohort}/d{width}"] == pytest.approx(
                    report["by_dim"][str(width)]["metrics"][cohort][metric])
        assert row["test/popularity_spearman"] == pytest.approx(report["popularity_similarity"]["spearman"])
        recall[run] = report["by_dim"][str(width)]["metrics"]["all"]["recall@10"]
    # The two runs really differ in what they trained (pooling reached the model).
    configs = [(tmp_path / "runs" / "s" / r / "config.gin").read_text() for r in ("mean_seed0", "last_n_seed0")]
    assert "pooling = 'mean'" in configs[0] and "pooling = 'last_n'" in configs[1] and "last_n = 4" in configs[1]
    # summary.md: the headline row holds each variant's one seed, formatted here from the eval reports.
    want = (f"| test/recall@10/all/d{width} | {recall['mean_seed0']:.3f} (1 seed) "
            f"| {recall['last_n_seed0']:.3f} (1 seed) |")
    assert want in tiny_sweep.md.splitlines(), want
    assert (results / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # examples.json: the first member's top 10 by the run's own embeddings, read here by item id.
    examples = json.loads((results / "runs" / "mean_seed0" / "examples.json").read_text())
    member = examples["members"][0]
    embeddings = tmp_path / "runs" / "s" / "mean_seed0" / "embeddings"
    item_ids, items = read_tower(embeddings / "items")
    member_ids, members = read_tower(embeddings / "members_test")
    vector = members[member_ids.tolist().index(member["user_id"])]
    by_id = dict(zip(item_ids.tolist(), items))
    top = member["top"]
    np.testing.assert_allclose([t["score"] for t in top], [by_id[t["item_id"]] @ vector for t in top], rtol=1e-5)
    assert len({t["item_id"] for t in top}) == 10 and all(a["score"] >= b["score"] for a, b in zip(top, top[1:]))
    history = {h["item_id"] for h in member["history"]}
    # No item missing from the top (its recent history aside) scores above the tenth.
    above = [i for i, v in by_id.items() if v @ vector > top[-1]["score"] + 1e-5 and i not in history]
    assert set(above) <= {t["item_id"] for t in top}, above
    assert all(t["target"] == (t["item_id"] in {g["item_id"] for g in member["targets"]}) for t in top)
    assert "<author_industry>" in top[0]["text"]

    # A second call finds everything finished and runs nothing.
    code, out, _ = _main(capsys, *flags)
    assert code == 0 and "0 ran, 2 already finished" in out

    # Remove one run's eval results: only that run runs again (train resumes at its last step).
    removed = tmp_path / "runs" / "s" / "last_n_seed0" / "eval" / "metrics_test.json"
    removed.unlink()
    before = (tmp_path / "runs" / "s" / "mean_seed0" / "sweep_run.json").read_text()
    code, out, err = _main(capsys, *flags)
    assert code == 0, err
    assert "1 ran, 1 already finished" in out and "last_n_seed0" in out and "mean_seed0" not in out
    assert removed.exists()
    assert (tmp_path / "runs" / "s" / "mean_seed0" / "sweep_run.json").read_text() == before
    assert len(pd.read_csv(results / "summary.csv")) == 2


# ----------------------------------------------------------------------------- commands


def test_dry_run_prints_commands_that_parse_back_into_the_runs_commands(tmp_path, capsys):
    path = _write(tmp_path, TINY.replace("seeds = [0]", "seeds = [0, 1]"))
    code, out, err = _main(capsys, f"--sweep={path}", "--dry_run", "--data_dir=/data", "--workdir=/w",
                           "--gin.STEPS=2")
    assert code == 0, err
    lines = out.strip().splitlines()
    runs = sweep.plan(sweep.load(str(path)), Path("/w"), Path("/data"), bindings=["STEPS=2"])
    assert [shlex.split(line) for line in lines[1:]] == [list(c) for r in runs for c in r.commands]
    assert shlex.split(lines[0]) == ["ff-jax", "sweep", f"--sweep={path}", "--prepare_only", "--data_dir=/data"]
    assert len(lines) == 1 + 2 * 2 * 3  # the preparation, then 2 variants x 2 seeds x (train, embed, eval)
    train = shlex.split(lines[1])
    assert train[:3] == ["ff-jax", "train", "--gin_file=experiments/compact_feed_world.gin"]
    assert "--gin.DATA_DIR=/data/compact_feed_world" in train and "--gin.train.seed=0" in train
    assert train[-2:] == ["--gin.STEPS=2", "--workdir=/w/s/mean_seed0"]  # the flag's binding comes last: it wins
    assert shlex.split(lines[-1]) == ["ff-jax", "eval", "--gin.evaluate_run.ann=False", "--workdir=/w/s/last_n_seed1"]
    # --multihost: each training command for one process per host.
    code, out, _ = _main(capsys, f"--sweep={path}", "--dry_run", "--multihost", "--data_dir=/data", "--seeds=1")
    trains = [shlex.split(line) for line in out.splitlines() if " train " in line]
    assert len(trains) == 2 and all(t[2] == "--distributed" and "--gin.train.seed=1" in t for t in trains)
    # --variants: only the named ones (with --seeds: both filters apply).
    code, out, _ = _main(capsys, f"--sweep={path}", "--dry_run", "--workdir=/w", "--variants=last_n", "--seeds=1")
    workdirs = [shlex.split(line)[-1] for line in out.splitlines()[1:]]
    assert workdirs == ["--workdir=/w/s/last_n_seed1"] * 3


def test_every_value_reaches_gin_as_written_in_the_sweep_file():
    """Each flag value the sweep writes is parsed by ff_jax.gin_cli back into the TOML value."""
    import gin

    from ff_jax.gin_cli import parse
    from ff_jax.retrieval import evaluate  # noqa: F401  (registers evaluate_run)
    from ff_jax.train import loop  # noqa: F401  (registers the configurables)

    values = {"EncoderConfig.pooling": "last_n", "DATA_DIR": "/data/x y", "FeedData.numbers": "raw",
              "train.pca_dims": [32, 16, 8], "evaluate_run.baselines": ["popularity"], "InfoNCE.temperature": 0.1,
              "InfoNCE.learn_temperature": True, "train.model_overrides": {"remat": True, "dtype": "bfloat16"},
              "DATASET": "None"}
    bindings = [f"{k}={sweep.gin_text(v, k)}" for k, v in values.items()]
    parse(["experiments/tiny_smoke.gin"], bindings)
    for key, value in values.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert gin.query_parameter(key if "." in key else f"%{key}") == expected, key
    assert sweep.gin_text("@MatryoshkaInfoNCE()", "x") == "@MatryoshkaInfoNCE()"


def test_every_shipped_sweep_file_loads_and_its_runs_parse_as_gin(tmp_path):
    import gin

    from ff_jax.gin_cli import parse
    from ff_jax.retrieval import embed_job, evaluate  # noqa: F401  (register EmbedConfig, evaluate_run)
    from ff_jax.train import loop  # noqa: F401

    files = sorted((CONFIGS_DIR / "sweeps").glob("*.toml"))
    names = {f.stem for f in files}
    for ablation in ("loss", "dims", "numbers", "hard_negatives", "pooling", "history"):
        assert {f"{ablation}_feed_world", f"{ablation}_movielens"} <= names
    for path in files:
        loaded = sweep.load(str(path))
        assert loaded.seeds == (0, 1, 2), path.name
        for run in sweep.plan(loaded, tmp_path / "w", tmp_path / "data"):
            train = run.commands[0]
            files_ = [a.split("=", 1)[1] for a in train if a.startswith("--gin_file=")]
            bindings = [a[len("--gin."):] for a in train if a.startswith("--gin.")]
            parse(files_, bindings)  # every name is a real configurable or macro, every value parses
            assert gin.query_parameter("train.seed") == run.seed
            gin.clear_config()


# ----------------------------------------------------------------------------- bad sweep files


@pytest.mark.parametrize("text, message", [
    ("seeds = [0]\n[variants.a]\nX = 1", "gin_file must name the base experiment"),
    ('gin_file = "a.gin"\n', "either [variants.NAME] tables or one [grid]"),
    ('gin_file = "a.gin"\nseeds = [1, 1]\n[grid]\nNEGATIVES = [0]', "seeds must be a non-empty list of distinct"),
    ('gin_file = "a.gin"\nprepare = "elsewhere"\n[grid]\nNEGATIVES = [0]', "prepare = 'elsewhere'"),
    ('gin_file = "a.gin"\nsteps = 3\n[grid]\nNEGATIVES = [0]', "unknown key(s) ['steps']"),
    ('gin_file = "a.gin"\n[grid]\nNEGATIVES = 0', "grid.NEGATIVES must be a non-empty list"),
    ('gin_file = "a.gin"\n[variants.a]\nX = 1979-05-27', "variants.a.X: date values have no gin form"),
    ('gin_file = "a.gin"\n[variants."a b"]\nX = 1', "a variant name is a folder name"),
    ('gin_file = "a.gin"\n[variants.a]\ndata = { numbers = "raw" }', "needs a prepared dataset variant"),
    ('gin_file = "a.gin"\nprepare = "movielens"\n[variants.a]\ndata = { size = 3 }', "unknown key(s) ['size']"),
    ('gin_file = "a.gin"\n[variants.a\n', "not valid TOML"),
])
def test_a_bad_sweep_file_is_one_line_naming_file_and_key(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    code, _, err = _main(capsys, f"--sweep={path}", "--dry_run")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("ff-jax sweep: bad sweep file:") and str(path) in err and message in err


def test_missing_sweep_and_unknown_seed_are_refused(tmp_path, capsys):
    code, _, err = _main(capsys, "--sweep=no_such_sweep", "--dry_run")
    assert code == 2 and "no such file" in err and "no_such_sweep" in err
    code, _, err = _main(capsys, "--sweep=pooling_feed_world", "--dry_run", "--seeds=7")
    assert code == 2 and "--seeds=7" in err and "[0, 1, 2]" in err
    code, _, err = _main(capsys, "--sweep=pooling_feed_world", "--dry_run", "--variants=mean,median")
    assert code == 2 and "--variants=mean,median" in err and "['mean', 'last', 'last_n']" in err
    code, _, err = _main(capsys, "--sweep=pooling_feed_world", "--multihost", f"--workdir={tmp_path}")
    assert code == 2 and "--multihost" in err


def test_grid_variants_are_the_product_named_by_their_values(tmp_path):
    path = _write(tmp_path, 'gin_file = "a.gin"\n[grid]\nNEGATIVES = [0, 2]\n"EncoderConfig.pooling" = ["mean", "last"]')
    variants = sweep.load(str(path)).variants
    assert [v.name for v in variants] == ["NEGATIVES_0-pooling_mean", "NEGATIVES_0-pooling_last",
                                          "NEGATIVES_2-pooling_mean", "NEGATIVES_2-pooling_last"]
    assert variants[3].train == {"NEGATIVES": 2, "EncoderConfig.pooling": "last"}


def test_a_workdir_of_other_commands_is_refused_not_reused(tmp_path):
    path = _write(tmp_path, TINY)
    runs = sweep.plan(sweep.load(str(path)), tmp_path / "w", tmp_path / "data")
    run = runs[0]
    run.workdir.mkdir(parents=True)
    record = {"commands": [list(c) for c in run.commands], "seconds": {}}
    record["commands"][0][-2] = "--gin.FeedData.seed=5"
    (run.workdir / sweep.RECORD).write_text(json.dumps(record))
    with pytest.raises(sweep.SweepError, match="holds a run of other commands.*FeedData.seed=5"):
        sweep.is_finished(run)
    (runs[1].workdir).mkdir(parents=True)
    (runs[1].workdir / "checkpoints").mkdir()
    with pytest.raises(sweep.SweepError, match="not empty and holds no sweep_run.json"):
        sweep.is_finished(runs[1])


def test_a_run_is_finished_only_while_its_recorded_eval_results_are_there(tmp_path):
    run = sweep.plan(sweep.load(str(_write(tmp_path, TINY))), tmp_path / "w", tmp_path / "data")[0]
    (run.workdir / "eval").mkdir(parents=True)
    run.eval_file.write_text('{"a": 1}')
    record = {"commands": [list(c) for c in run.commands], "seconds": {},
              "eval_sha256": sha256_file(run.eval_file)}
    (run.workdir / sweep.RECORD).write_text(json.dumps(record))
    assert sweep.is_finished(run)
    run.eval_file.write_text('{"a": 2}')  # another eval's results (or a half-written file)
    assert not sweep.is_finished(run)
    run.eval_file.unlink()
    assert not sweep.is_finished(run)


# ----------------------------------------------------------------------------- summary statistics


def test_mean_and_sample_std_against_a_hand_computed_case():
    # 0.10, 0.20, 0.60: mean 0.30; deviations -0.2, -0.1, 0.3; squares .04 + .01 + .09 = .14; /(3-1) = .07
    mean, std, n = sweep.mean_std([0.10, 0.20, 0.60])
    assert (mean, n) == (pytest.approx(0.30), 3) and std == pytest.approx(math.sqrt(0.07))
    assert sweep.format_mean_std([0.10, 0.20, 0.60]) == "0.300 ± 0.265"
    assert sweep.format_mean_std([0.25]) == "0.250 (1 seed)" and math.isnan(sweep.mean_std([0.25])[1])
    assert sweep.mean_std([0.1, float("nan"), 0.3])[2] == 2  # a missing metric is not a zero
    assert sweep.format_mean_std([]) == "—" and sweep.format_mean_std([120.0, 130.0]) == "125.0 ± 7.1"


def _report(recall: float, width: int = 64) -> dict:
    metrics = {c: {"users": 10, "recall@10": recall, "recall@100": recall * 2, "ndcg@10": recall / 2, "mrr": 0.1}
               for c in ("all", "new", "established")}
    return {"width": width, "by_dim": {str(width): {"metrics": metrics}},
            "popularity_similarity": {"spearman": recall / 10, "pearson_log": 0.0, "pairs": 1},
            "baselines": {"popularity": {"metrics": {"all": {"users": 10, "recall@10": 0.05}}}}}


def test_summary_is_one_row_per_run_and_mean_std_over_seeds_per_variant(tmp_path):
    text = 'gin_file = "a.gin"\nseeds = [0, 1, 2]\n[variants.a]\nX = 1\n[variants.b]\nX = 2'
    loaded = sweep.load(str(_write(tmp_path, text)))
    runs = sweep.plan(loaded, tmp_path / "w", tmp_path / "d")
    recalls = {"a": [0.10, 0.20, 0.60], "b": [0.30, 0.50, None]}  # b's seed 2 never finished
    results = tmp_path / "results"
    for run in runs:
        recall = recalls[run.variant.name][run.seed]
        if recall is None:
            continue
        folder = results / "runs" / run.name
        folder.mkdir(parents=True)
        (folder / "metrics_test.json").write_text(json.dumps(_report(recall)))
        (folder / sweep.RECORD).write_text(json.dumps({"seconds": {"train": 60.0 + run.seed, "embed": 1, "eval": 1}}))
        (folder / "metrics.jsonl").write_text(
            json.dumps({"step": 5, "split": "train", "loss": 3.0}) + "\n"
            + json.dumps({"step": 5, "split": "validation", "recall@10": recall, "recall@10/pca32": recall / 2}) + "\n")
    table = sweep.summarize(loaded, runs, results)
    csv = pd.read_csv(results / "summary.csv")
    assert len(csv) == len(table) == 5 and csv["bind:X"].tolist() == [1, 1, 1, 2, 2]
    assert np.allclose(csv["test/recall@10/new/d64"], [0.1, 0.2, 0.6, 0.3, 0.5])
    assert np.allclose(csv["validation/recall@10/pca32"], [0.05, 0.1, 0.3, 0.15, 0.25])
    assert np.allclose(csv["train_seconds"], [60, 61, 62, 60, 61])
    md = (results / "summary.md").read_text()
    assert "| test/recall@10/all/d64 | 0.300 ± 0.265 | 0.400 ± 0.141 |" in md  # b: (.3, .5) -> .4 ± .1414
    assert "| baseline/popularity/recall@10/all | 0.050 ± 0.000 | 0.050 ± 0.000 |" in md
    assert "- `b` (2 runs): X=2" in md
    for png in ("recall.png", "popularity_correlation.png"):
        assert (results / png).read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- data variants


def test_compact_feed_world_variants_are_prepared_where_the_runs_bindings_point(tmp_path):
    """numbers raw / absent and impression histories: real prepared datasets, each with its own
    tokenizer, at the DATA_DIR / DATASET_CONFIG / TOKENIZER the run's commands name."""
    from tokenizers import Tokenizer

    from ff_jax.data import prepared

    text = ('gin_file = "experiments/compact_feed_world.gin"\nprepare = "compact_feed_world"\n[variants.q]\n'
            '[variants.raw]\ndata = { numbers = "raw" }\n[variants.absent]\ndata = { numbers = "absent" }\n'
            '[variants.impressions]\ndata = { history_source = "impressions" }\n')
    loaded = sweep.load(str(_write(tmp_path, text)))
    sweep.prepare_data(loaded, tmp_path / "data", log=lambda line: None)
    seen = {}
    for variant in loaded.variants:
        b = sweep.data_bindings(loaded, variant, tmp_path / "data")
        config = b["DATASET_CONFIG"] + (f"_{b['FeedData.numbers']}" if "FeedData.numbers" in b else "")
        corpus = prepared.open_prepared(b["DATA_DIR"], "feed_world_corpus", config)[0]["corpus"]
        train = prepared.open_prepared(b["DATA_DIR"], "feed_world", config)[0]["train"]
        prompts = [corpus[i]["item_prompt"] for i in range(200)]
        histories = "".join(h for i in range(50) for h in train[i]["member_history"])
        seen[variant.name] = (prompts, histories, Tokenizer.from_file(b["TOKENIZER"]).get_vocab())
    q, raw, absent, impressions = (seen[n] for n in ("q", "raw", "absent", "impressions"))
    assert all("<view_percentile>" in p and "<view_count>" not in p for p in q[0])
    assert all("<view_count>" in p and "<view_percentile>" not in p for p in raw[0])
    assert all("view_" not in p for p in absent[0])
    assert "<action>skipped</action>" in impressions[1] and "<action>" not in q[1]
    counts = {p.split("<view_count>")[1].split("<")[0] for p in raw[0]}
    assert any(c in raw[2] and c not in q[2] for c in counts if int(c) > 100)  # raw counts are its own words
    assert "view_percentile" not in str(absent[2])


def test_a_pass_over_some_seeds_skips_finished_runs_and_summarises_every_seed_with_results(tmp_path):
    text = 'gin_file = "a.gin"\nseeds = [0, 1]\n[variants.a]\nX = 1'
    loaded = sweep.load(str(_write(tmp_path, text)))
    results = tmp_path / "results"
    for run in sweep.plan(loaded, tmp_path / "w", tmp_path / "d"):  # both seeds finished earlier
        (run.workdir / "eval").mkdir(parents=True)
        run.eval_file.write_text(json.dumps(_report(0.1 * (run.seed + 1))))
        record = {"commands": [list(c) for c in run.commands], "seconds": {"train": 5.0},
                  "eval_sha256": sha256_file(run.eval_file)}
        (run.workdir / sweep.RECORD).write_text(json.dumps(record))
        folder = results / "s" / "runs" / run.name
        folder.mkdir(parents=True)
        for name, source in (("metrics_test.json", run.eval_file), (sweep.RECORD, run.workdir / sweep.RECORD)):
            (folder / name).write_bytes(source.read_bytes())
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 1.0}) + "\n")
    lines = []
    outcome = sweep.run_sweep(loaded, tmp_path / "w", results, tmp_path / "d", seeds=[0], log=lines.append)
    assert outcome == {"skipped": ["a_seed0"], "ran": [], "failed": []}
    assert pd.read_csv(results / "s" / "summary.csv")["seed"].tolist() == [0, 1]  # seed 1 kept in the summary
    assert "| test/recall@10/all/d64 | 0.150 ± 0.071 |" in (results / "s" / "summary.md").read_text()


def test_a_failed_run_does_not_stop_the_others_and_is_named_with_its_log(tmp_path, capsys):
    """Each run is its own ff-jax process: both runs are attempted although the first fails; the
    sweep then exits 2 naming both, each with the log holding ff-jax's own one-line error."""
    path = _write(tmp_path, 'gin_file = "experiments/tiny_smoke.gin"\n[variants.bad_pooling]\n'
                            '"EncoderConfig.pooling" = "median"\n[variants.bad_warmup]\n'
                            '"OptimizerConfig.warmup_steps" = 5000\n')
    code, out, err = _main(capsys, f"--sweep={path}", f"--data_dir={tmp_path / 'd'}", f"--workdir={tmp_path / 'w'}",
                           f"--results_dir={tmp_path / 'r'}")
    assert code == 2 and "0 ran, 0 already finished, 2 failed" in out
    assert "[1/2] bad_pooling_seed0" in out and "[2/2] bad_warmup_seed0" in out
    assert err.startswith("ff-jax sweep: sweep failed: 2 run(s) failed: bad_pooling_seed0 (log: ")
    logs = tmp_path / "w" / "s"
    assert "EncoderConfig.pooling must be one of" in (logs / "bad_pooling_seed0" / "logs" / "train.log").read_text()
    assert "warmup_steps (5000) must be below" in (logs / "bad_warmup_seed0" / "logs" / "train.log").read_text()
    assert not (tmp_path / "r" / "s" / "summary.csv").exists()  # nothing finished: no summary


def test_the_package_keeps_every_name_the_single_module_had():
    # ff_jax/sweep.py became a package of modules; users' `from ff_jax.sweep import X` must not break.
    names = ["EVAL_FILE", "PREPARATIONS", "RECORD", "STAGES", "SWEEPS_DIR", "Run", "Sweep", "SweepError",
             "SweepFileError", "Variant", "chosen_seeds", "collect", "command_lines", "data_bindings", "execute",
             "flatten_metrics", "format_mean_std", "gin_text", "headline_columns", "is_finished", "last_logged",
             "load", "main", "mean_std", "plan", "plot", "prepare_data", "resolve", "run_sweep", "summarize",
             "summary_markdown", "summary_rows", "top_items"]
    assert [n for n in names if not hasattr(sweep, n)] == []
    assert sweep.SWEEPS_DIR == CONFIGS_DIR / "sweeps" and sweep.RECORD == "sweep_run.json"


# ----------------------------------------------------------------------------- --ray


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for this module's --ray tests, shut down after them."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _without_wall_times(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.endswith("_seconds")])


@pytest.mark.slow
def test_ray_runs_two_runs_as_tasks_and_gives_the_sequential_summary(tiny_sweep, capsys, local_ray):
    """The module's sequential TINY sweep (its data reused) against the same sweep as Ray tasks."""
    root = tiny_sweep.root
    on_ray = [f"--sweep={tiny_sweep.path}", f"--data_dir={root / 'tfds'}", f"--workdir={root / 'ray'}",
              f"--results_dir={root / 'ray_results'}", "--ray"]
    code, out, err = _main(capsys, *on_ray)
    assert code == 0 and "2 ran, 0 already finished, 0 failed" in out, err
    assert "Ray: 2 CPUs, 0 GPUs; each run asks for 1 CPUs" in out and "[1/2] mean_seed0" in out
    # The same summary: every metric, binding and step; only the wall times differ.
    seq = tiny_sweep.summary
    ray = pd.read_csv(root / "ray_results" / "s" / "summary.csv")
    assert list(seq.columns) == list(ray.columns) and len(ray) == 2
    # Equal to float rounding: the runs of a 1-CPU Ray task differ from the driver's in the last digits
    # (Ray sets OMP_NUM_THREADS to the task's CPUs, so BLAS may sum in another order; here MRR moved
    # in its 4th digit, the same on two tries, and by 1.2e-3 relative on a slower 2-core machine).
    pd.testing.assert_frame_equal(_without_wall_times(ray), _without_wall_times(seq), check_exact=False, rtol=2e-3)
    md = [tiny_sweep.md.splitlines(), (root / "ray_results" / "s" / "summary.md").read_text().splitlines()]
    assert [line for line in md[1] if "_seconds" not in line] == [line for line in md[0] if "_seconds" not in line]
    # Skipping is the driver's, as without Ray: the same command again submits nothing.
    code, out, _ = _main(capsys, *on_ray)
    assert code == 0 and "0 ran, 2 already finished" in out and "[1/2]" not in out


@pytest.mark.slow
def test_ray_a_failed_run_is_the_same_one_line_error_as_without_ray(tmp_path, capsys, local_ray):
    path = _write(tmp_path, 'gin_file = "experiments/tiny_smoke.gin"\n[variants.bad_pooling]\n'
                            '"EncoderConfig.pooling" = "median"\n[variants.fine]\n')
    errors = []
    for extra in ([], ["--ray"]):
        flags = [f"--sweep={path}", f"--data_dir={tmp_path / 'd'}", f"--workdir={tmp_path / 'w'}",
                 f"--results_dir={tmp_path / 'r'}", "--variants=bad_pooling", *extra]
        code, out, err = _main(capsys, *flags)
        assert code == 2 and "0 ran, 0 already finished, 1 failed" in out and "[1/1] bad_pooling_seed0" in out
        assert "bad_pooling_seed0: `ff-jax train` exited 2" in out
        errors.append(err)
    assert errors[1] == errors[0] and errors[0].count("\n") == 1
    assert errors[0].startswith("ff-jax sweep: sweep failed: 1 run(s) failed: bad_pooling_seed0 (log: ")
    log = (tmp_path / "w" / "s" / "bad_pooling_seed0" / "logs" / "train.log").read_text()
    assert log.count("EncoderConfig.pooling must be one of") == 2  # both attempts, the Ray task's too


def test_ray_a_task_that_raises_is_a_failed_run_named_at_the_end(tmp_path, capsys, local_ray):
    """An exception inside the task (here: its workdir cannot be made) fails that run, in one line."""
    path = _write(tmp_path, 'gin_file = "a.gin"\n[variants.a]\nX = 1')
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "s").write_text("not a folder")  # where the sweep's run folders would go
    code, out, err = _main(capsys, f"--sweep={path}", f"--workdir={tmp_path / 'w'}", f"--data_dir={tmp_path}",
                           f"--results_dir={tmp_path / 'r'}", "--ray")
    assert code == 2 and "0 ran, 0 already finished, 1 failed" in out
    assert any(line.startswith("  a_seed0: NotADirectoryError:") for line in out.splitlines()), out
    assert err.startswith("ff-jax sweep: sweep failed: 1 run(s) failed: a_seed0 (log: ") and err.count("\n") == 1


def test_ray_resources_come_from_the_sweep_file_and_the_flags_override_them(tmp_path):
    from ff_jax.sweep.command import ray_resources

    plain = sweep.load(str(_write(tmp_path, 'gin_file = "a.gin"\n[variants.a]\nX = 1', "plain.toml")))
    assert plain.resources == {"cpus": 1.0, "gpus": 0.0}
    sized = sweep.load(str(_write(tmp_path, 'gin_file = "a.gin"\nresources = { cpus = 4, gpus = 0.5 }\n'
                                            '[variants.a]\nX = 1', "sized.toml")))
    assert sized.resources == {"cpus": 4.0, "gpus": 0.5}
    assert ray_resources(sized, None, None) == {"cpus": 4.0, "gpus": 0.5}
    assert ray_resources(sized, 2.0, None) == {"cpus": 2.0, "gpus": 0.5}
    assert ray_resources(plain, None, 1.0) == {"cpus": 1.0, "gpus": 1.0}


@pytest.mark.parametrize("resources, message", [
    ("resources = 2", "resources must be a table"),
    ("resources = { cpu = 2 }", "resources must be a table with some of ['cpus', 'gpus']"),
    ('resources = { gpus = "one" }', "resources.gpus must be a number >= 0"),
    ("resources = { cpus = -1 }", "resources.cpus must be a number >= 0"),
])
def test_ray_bad_resources_are_one_line_naming_the_file(tmp_path, capsys, resources, message):
    path = _write(tmp_path, f'gin_file = "a.gin"\n{resources}\n[variants.a]\nX = 1')
    code, _, err = _main(capsys, f"--sweep={path}", "--dry_run")
    assert code == 2 and err.count("\n") == 1 and err.startswith("ff-jax sweep: bad sweep file:"), err
    assert str(path) in err and message in err


def test_ray_flags_that_do_not_go_together_are_refused(tmp_path, capsys):
    path = _write(tmp_path, 'gin_file = "a.gin"\n[variants.a]\nX = 1')
    for flags, message in ((["--ray", "--dry_run"], "goes with neither --dry_run"),
                           (["--ray_address=auto", "--prepare_only"], "goes with neither --dry_run"),
                           (["--ray_cpus=2"], "use them with --ray or --ray_address")):
        code, _, err = _main(capsys, f"--sweep={path}", f"--workdir={tmp_path / 'w'}", *flags)
        assert code == 2 and err.startswith("ff-jax sweep: sweep failed:") and message in err, err


def test_ray_missing_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = _write(tmp_path, 'gin_file = "a.gin"\n[variants.a]\nX = 1')
    code, _, err = _main(capsys, f"--sweep={path}", f"--workdir={tmp_path / 'w'}", "--ray")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("ff-jax sweep: missing dependency: --ray needs Ray") and "pip install 'ff_jax[ray]'" in err


def test_fresh_and_seen_targets_are_columns_and_summary_rows():
    """metrics_test.json's freshness (the model's and a baseline's) becomes fresh / seen cohorts, and
    summary.md shows their recall@10 beside the members' cohorts."""
    from ff_jax.sweep.summary import flatten_metrics, headline_columns

    def report(recall):
        return {"metrics": {"all": {"users": 4.0, "recall@10": recall}},
                "freshness": {"fresh": {"targets": 3.0, "users": 2.0, "recall@10": recall / 2},
                              "seen": {"targets": 9.0, "users": 4.0, "recall@10": recall}}}

    flat = flatten_metrics({"width": 64, "by_dim": {"64": report(0.4)}, "baselines": {"als": report(0.2)}})
    assert flat["test/recall@10/fresh/d64"] == 0.2 and flat["test/targets/fresh/d64"] == 3.0
    assert flat["test/recall@10/seen/d64"] == 0.4 and flat["baseline/als/recall@10/fresh"] == 0.1
    assert "test/users/fresh/d64" not in flat
    table = pd.DataFrame([{"width": 64, **flat}])
    rows = headline_columns(table)
    assert {"test/recall@10/fresh/d64", "test/recall@10/seen/d64", "baseline/als/recall@10/fresh"} <= set(rows)
    assert "test/targets/fresh/d64" not in rows
