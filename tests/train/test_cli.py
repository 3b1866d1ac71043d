"""`ff-jax` command-line errors: each names what is wrong and exits 2 before any training."""

import json

import pytest

from ff_jax import cli
from ff_jax.gin_cli import required_macros_in, split_flags

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
    # The effective config of the attempt is still written, for the record.
    assert "InfoNCE" in (workdir / "config.gin").read_text()


def test_missing_gin_file_and_unknown_subcommand(tmp_path, capsys):
    code, err = _run(capsys, "train", "--gin_file=nope.gin", f"--workdir={tmp_path}")
    assert code == 2 and "nope.gin" in err
    code, err = _run(capsys, "fly")
    assert code == 2 and "unknown subcommand 'fly'" in err


def test_flags_in_both_spellings_and_bare_strings_become_gin_strings():
    files, bindings, workdir, rest = split_flags(["--gin_file", "a.gin", "--gin_file=b.gin", "--workdir", "/w",
                                                  "--gin.X=/data/dir", "--gin.Y=3", "--gin.Z=@tiny()", "--extra"])
    assert files == ["a.gin", "b.gin"] and workdir == "/w" and rest == ["--extra"]
    assert bindings == ["X = '/data/dir'", "Y = 3", "Z = @tiny()"]


def test_every_experiment_file_parses_and_layers_one_model_and_one_run():
    import gin

    from ff_jax.gin_cli import CONFIGS_DIR, parse
    from ff_jax.train import loop  # noqa: F401  (registers the configurables)

    experiments = sorted((CONFIGS_DIR / "experiments").glob("*.gin"))
    assert len(experiments) >= 14
    for path in experiments:
        text = path.read_text()
        assert text.count("include 'model/") == 1 and text.count("include 'runs/") == 1, path.name
        parse([str(path)], ["DATA_DIR = '/tmp/none'"])
        assert gin.query_parameter("FeedData.data_dir") is not None, path.name


def test_a_command_leaves_no_gin_bindings_behind(tmp_path, capsys):
    """A run in a notebook or test must not change the defaults of what is constructed after it."""
    import gin

    from ff_jax.train.data_source import FeedData

    code, _ = _run(capsys, "train", "--gin_file=experiments/tiny_smoke.gin", f"--gin.DATA_DIR={tmp_path}",
                   "--gin.DATASET='elsewhere'", "--gin.train.no_such_setting=3", f"--workdir={tmp_path / 'w'}")
    assert code == 2
    assert gin.config_str().strip() == ""
    assert FeedData(data_dir=str(tmp_path)).dataset == "feed_world"
