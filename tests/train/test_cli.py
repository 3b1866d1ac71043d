"""`ff-jax` command-line errors: each names what is wrong and exits 2 before any training."""

import json

import pytest

from ff_jax import cli
from ff_jax.gin_cli import CONFIGS_DIR, parse, required_macros_in
from ff_jax.retrieval.embedding_store import EmbeddingStoreError

pytestmark = pytest.mark.xdist_group("train_cli")


def _run(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_gin_name_is_named(tmp_path, capsys):
    code, err = _run(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                     "--gin.train.no_such_setting=3", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert "unknown gin name" in err and "no_such_setting" in err


def test_unknown_configurable_is_named(tmp_path, capsys):
    code, err = _run(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", "--gin.NotAThing.x=1",
                     f"--gin.DATA_DIR={tmp_path}", f"--workdir={tmp_path / 'w'}")
    assert code == 2 and "NotAThing" in err


def test_missing_required_macro_is_named(tmp_path, capsys):
    assert required_macros_in("runs/train.gin") == ["DATA_DIR"]
    code, err = _run(capsys, "train", "--gin_file=configs/experiments/tiny_smoke.gin", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert "missing required gin macro" in err and "DATA_DIR" in err and "--gin.DATA_DIR=" in err


def test_a_refused_gin_value_is_named_by_embed_as_by_train(tmp_path, capsys):
    code, err = _run(capsys, "embed", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                     "--gin.EmbedConfig.dtype='int8'", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert "bad gin value" in err and "EmbedConfig.dtype" in err


def test_workdir_of_an_incompatible_run_is_refused(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    other = {"model": {"hidden_size": 128}, "encoder": {}, "loss": "BCE", "learned": [True, True],
             "accumulation_steps": 1}
    (workdir / "run.json").write_text(json.dumps(other))
    code, err = _run(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                     f"--workdir={workdir}")
    assert code == 2
    assert "incompatible run" in err and "'BCE' in the workdir, 'InfoNCE' now" in err
    assert "hidden_size" in err
    # A refused run writes nothing: no config.gin that `ff-jax embed --workdir` would then read.
    assert sorted(p.name for p in workdir.iterdir()) == ["run.json"]
    assert json.loads((workdir / "run.json").read_text()) == other


def test_missing_gin_file_and_unknown_subcommand(tmp_path, capsys):
    code, err = _run(capsys, "train", "--gin_file=nope.gin", f"--workdir={tmp_path}")
    assert code == 2 and "nope.gin" in err
    code, err = _run(capsys, "fly")
    assert code == 2 and "unknown subcommand 'fly'" in err


def test_flags_in_both_spellings_and_bare_words_become_gin_strings_where_a_string_fits():
    import gin

    from ff_jax.train import loop  # noqa: F401  (registers the configurables)

    fv = cli.parse_flags(cli.flag_values(cli.COMMANDS["train"]), "train", [
        "--gin_file", "a.gin", "--gin_file=b.gin", "--workdir", "/w", "--gin.X=/data/dir", "--gin_bindings=Y=3",
        "--nodistributed"])
    assert fv.gin_file == ["a.gin", "b.gin"] and fv.workdir == "/w" and fv.gin_bindings == ["X=/data/dir", "Y=3"]
    parse(["experiments/tiny_smoke.gin"], ["DATA_DIR=/data/dir", "DATASET=movielens_feed", "STEPS=3",
                                           "train.pretrained=/models/x.gguf", "train.model_config=@tiny()"])
    assert gin.query_parameter("%DATA_DIR") == "/data/dir" and gin.query_parameter("%DATASET") == "movielens_feed"
    assert gin.query_parameter("%STEPS") == 3 and gin.query_parameter("train.pretrained") == "/models/x.gguf"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_of_every_subcommand_lists_its_flags_and_required_macros(name, capsys):
    assert cli.main([name, "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--gin_bindings", "--workdir", "--verbosity"):
        assert flag in out
    assert ("--gin_file" in out) == (name != "demo")
    assert ("--[no]distributed" in out) == (name == "train") and ("--steps" in out) == (name == "demo")
    required = required_macros_in(cli.COMMANDS[name].run_file)
    assert ("DATA_DIR" in required) == (name != "serve") and f"required: {', '.join(required)}" in out
    assert cli.main(["--help"]) == 0 and name in capsys.readouterr().out


def _one_line_error(capsys, *argv) -> str:
    code, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    return err


def test_an_unparseable_gin_value_is_one_line_naming_the_flag(tmp_path, capsys):
    err = _one_line_error(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                          "--gin.STEPS=twenty", f"--workdir={tmp_path / 'w'}")
    assert err.startswith("ff-jax train: bad gin value: --gin.STEPS=twenty: STEPS takes an int")
    assert not (tmp_path / "w").exists()  # refused before anything ran
    err = _one_line_error(capsys, "embed", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                          "--gin.DATADIR=/x", f"--workdir={tmp_path / 'w'}")
    assert "unknown gin name: --gin.DATADIR=/x: no gin file defines the macro DATADIR" in err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_an_unknown_flag_is_one_line(name, tmp_path, capsys):
    err = _one_line_error(capsys, name, "--no_such_flag=1", f"--workdir={tmp_path}")
    assert err.startswith(f"ff-jax {name}: unknown flag:") and "no_such_flag" in err
    err = _one_line_error(capsys, name, "stray", f"--workdir={tmp_path}")
    assert "bad flag" in err and "stray" in err


def test_errors_are_labelled_by_what_failed_not_as_gin_values(tmp_path, capsys):
    """A missing dataset inside `ff-jax eval` is a missing file, although gin called the function."""
    err = _one_line_error(capsys, "eval", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                          "--gin.FeedData.prepare=False", f"--workdir={tmp_path / 'w'}")
    assert err.startswith("ff-jax eval: no such file:") and "no prepared dataset here" in err
    assert cli.label(EmbeddingStoreError("x: checksum mismatch")) == "embedding store error"
    assert cli.label(RuntimeError("a bug")) is None and cli.label(TypeError("a bug")) is None  # tracebacks kept


def test_every_experiment_file_parses_and_layers_one_model_and_one_run():
    import gin

    from ff_jax.train import loop  # noqa: F401  (registers the configurables)

    experiments = sorted((CONFIGS_DIR / "experiments").glob("*.gin"))
    assert len(experiments) >= 15
    for path in experiments:
        text = path.read_text()
        assert text.count("include 'model/") == 1 and text.count("include 'runs/") == 1, path.name
        parse([str(path)], [f"{name} = '/tmp/none'" for name in required_macros_in(str(path))])
        assert gin.query_parameter("FeedData.data_dir") is not None, path.name


def test_a_command_leaves_no_gin_bindings_behind(tmp_path, capsys):
    """A run in a notebook or test must not change the defaults of what is constructed after it."""
    import gin

    from ff_jax.data.feed_data import FeedData

    code, _ = _run(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                   "--gin.DATASET='elsewhere'", "--gin.train.no_such_setting=3", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert gin.config_str().strip() == ""
    assert FeedData(data_dir=str(tmp_path)).dataset == "feed_world"


# ----------------------------------------------------------------------------- issue 26


def test_an_unknown_model_override_is_one_line_listing_the_fields(tmp_path, capsys):
    """Row 6: was a traceback (LlamaConfig.__init__() got an unexpected keyword argument 'dim'), exit 1."""
    err = _one_line_error(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                          "--gin.train.model_overrides={'dim': 96}", f"--workdir={tmp_path / 'w'}")
    assert err.startswith("ff-jax train: error: model_overrides: unknown LlamaConfig field(s) ['dim']"), err
    assert "hidden_size" in err and "lora_rank" in err  # the valid fields are listed
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["train", "embed", "eval", "rank-train"])
def test_a_workdir_that_is_a_file_is_refused_before_any_data_is_prepared(name, tmp_path, capsys):
    """Row 9: was found only after the data was prepared (a file-exists error)."""
    workdir = tmp_path / "w"
    workdir.write_text("not a folder")
    err = _one_line_error(capsys, name, "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path / 'd'}",
                          f"--workdir={workdir}")
    assert err == f"ff-jax {name}: bad flag: --workdir={workdir} is a file, not a folder\n"
    assert not (tmp_path / "d").exists()  # nothing prepared


@pytest.mark.parametrize("name", ["embed", "eval", "export"])
def test_a_missing_workdir_is_named_as_such(name, tmp_path, capsys):
    """Row 9: `ff-jax embed --workdir=<missing>` said "no training data is bound"."""
    extra = [f"--out={tmp_path / 'b'}"] if name == "export" else []
    err = _one_line_error(capsys, name, f"--workdir={tmp_path / 'missing'}", *extra)
    assert err.startswith(f"ff-jax {name}: no such workdir: --workdir={tmp_path / 'missing'} ("), err


@pytest.mark.parametrize("steps", [0, -5])
def test_a_step_count_below_one_is_named_as_such(steps, tmp_path, capsys):
    """Row 9: STEPS=0 or -5 was reported as a warm-up problem."""
    err = _one_line_error(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                          f"--gin.STEPS={steps}", f"--workdir={tmp_path / 'w'}")
    assert f"total_steps must be >= 1 (runs/train.gin sets it to the STEPS macro), got {steps}" in err, err
    assert "warmup" not in err
