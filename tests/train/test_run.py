"""Run.open / Run.create (ff_jax.train.run): a run's spec comes from its own config.gin, in a gin
scope of its own; its kind and signature are checked before anything is written."""

import json

import gin
import pytest

from ff_jax import gin_cli
from ff_jax.rank import evaluate  # noqa: F401  (registers the ranker's entry point and rerank_run)
from ff_jax.train import loop  # noqa: F401  (registers the dual encoder's entry point)
from ff_jax.train.layout import Layout
from ff_jax.train.run import (DUAL_ENCODER, RANKER, IncompatibleWorkdir, Run, RunSpec, WrongCheckpointKind,
                              dual_encoder_model)


def write_run(workdir, *lines, kind=None):
    """A workdir as `ff-jax train` leaves it: config.gin (tiny_smoke plus `lines`) and run.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = [f"include '{gin_cli.resolve_file('experiments/tiny_smoke.gin')}'", f"DATA_DIR = '{workdir / 'data'}'",
              *lines]
    (workdir / "config.gin").write_text("\n".join(config) + "\n")
    (workdir / "run.json").write_text(json.dumps({} if kind is None else {"kind": kind}))
    return workdir


def test_open_reads_the_runs_own_config_and_leaves_the_callers_gin_as_it_was(tmp_path):
    workdir = write_run(tmp_path / "run", "BatchConfig.length = 2048", "OptimizerConfig.learning_rate = 0.25",
                        "train.seed = 7", "make_mesh.num_devices = 1")
    with gin_cli.configured(["experiments/tiny_smoke.gin"], ["DATA_DIR=/elsewhere", "BatchConfig.length=256"]):
        run = Run.open(workdir)
        # The caller's parse is intact: its own value, not the run's.
        assert gin.query_parameter("BatchConfig.length") == 256
        assert gin.query_parameter("%DATA_DIR") == "/elsewhere"
    spec = run.spec
    assert (spec.kind, spec.seed, spec.optimizer.learning_rate) == (DUAL_ENCODER, 7, 0.25)
    assert spec.data.batch.length == 2048 and spec.data.data_dir == str(workdir / "data")
    assert spec.model_config.hidden_size > 0 and spec.pretrained is None
    # make_mesh's binding is taken when the run is opened: the factory means the same with no gin parsed.
    assert gin.config_str().strip() == ""
    assert spec.mesh_factory().devices.size == 1
    assert run.layout == Layout(workdir) and run.layout.checkpoints == workdir / "checkpoints"


def test_open_adds_the_commands_files_and_bindings_on_top(tmp_path):
    workdir = write_run(tmp_path / "run")
    run = Run.open(workdir, bindings=["DATA_DIR=/moved", "BatchConfig.length=1536"])
    assert run.spec.data.data_dir == "/moved" and run.spec.data.batch.length == 1536


def test_open_without_a_config_needs_gin_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.gin"):
        Run.open(tmp_path)
    run = Run.open(tmp_path, ["experiments/tiny_smoke.gin"], ["DATA_DIR=/d"])  # an untrained model, described
    assert run.kind == DUAL_ENCODER and run.spec.data.data_dir == "/d"


def test_open_refuses_the_other_kind(tmp_path):
    ranker = write_run(tmp_path / "ranker", kind=RANKER)
    with pytest.raises(WrongCheckpointKind, match="holds a ranker run, not a dual encoder"):
        Run.open(ranker, expect=DUAL_ENCODER)


def test_ranker_spec_takes_the_dual_encoders_model_unless_its_own_is_bound(tmp_path):
    files = ["ranker/tiny_smoke.gin"]
    with gin_cli.configured(files, ["DATA_DIR=/d", "train.model_overrides={'lora_rank': 4}"]):
        assert dual_encoder_model()["model_overrides"] == {"lora_rank": 4}
        spec = RunSpec.from_gin(RANKER)
        assert spec.model_overrides == {"lora_rank": 4} and spec.data.feed.data_dir == "/d"
    with gin_cli.configured(files, ["DATA_DIR=/d", "train.model_overrides={'lora_rank': 4}",
                                    "train_ranker.model_overrides={'lora_rank': 2}"]):
        assert RunSpec.from_gin(RANKER).model_overrides == {"lora_rank": 2}


def test_create_checks_kind_and_signature_and_writes_nothing_until_accepted(tmp_path):
    workdir = write_run(tmp_path / "run")
    spec = Run.open(workdir).spec
    (workdir / "run.json").unlink()
    run = Run.create(workdir, spec)
    assert not (workdir / "run.json").exists()
    run.accept("# config\n")
    assert json.loads((workdir / "run.json").read_text()) == json.loads(json.dumps(spec.signature()))
    assert (workdir / "config.gin").read_text() == "# config\n"

    Run.create(workdir, spec)  # the same run resumes
    wider = spec.model_config.replace(hidden_size=spec.model_config.hidden_size * 2)
    with pytest.raises(IncompatibleWorkdir, match="holds an incompatible run:\n  model: "):
        Run.create(workdir, RunSpec(DUAL_ENCODER, spec.data, wider, loss=spec.loss))
    (workdir / "run.json").write_text(json.dumps({"kind": RANKER}))
    with pytest.raises(WrongCheckpointKind):
        Run.create(workdir, spec)


def test_spec_refuses_an_unknown_model_override(tmp_path):
    spec = Run.open(write_run(tmp_path / "run")).spec
    with pytest.raises(ValueError, match=r"model_overrides: unknown LlamaConfig field\(s\) \['hidden'\]"):
        RunSpec(DUAL_ENCODER, spec.data, spec.model_config, model_overrides={"hidden": 3})


def test_open_reads_a_config_that_binds_later_stages_not_imported(tmp_path):
    """A run's config.gin may bind the embed job or the index; reading the spec needs neither."""
    workdir = write_run(tmp_path / "run", "SomeLaterStage.width = 3", "train.seed = 5")
    assert Run.open(workdir).spec.seed == 5
