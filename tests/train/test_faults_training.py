"""Issue 14, the training rows, reproduced for real through `ff-jax train`: a refused run, a loss
that turns NaN, and SIGTERM during a validation that would never end. Each asserts the new
behaviour and that what the user had (workdir files, good checkpoints) is intact."""

import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fault_runs import Runs, assert_finite_checkpoint, checkpoint_steps, digests, losses
from test_resume import _logged
from ff_jax.train.checkpointing import Checkpointer

pytestmark = [pytest.mark.xdist_group("train_subprocess"), pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("faults_training"))


@pytest.fixture(scope="module")
def reference(runs):
    return runs.reference()


def test_a_refused_run_changes_nothing_in_the_workdir(runs, reference):
    """Was: `--gin.EncoderConfig.pooling=last` on a mean-pooling workdir was refused after config.gin
    had been overwritten, so a later `ff-jax embed --workdir` embedded with the refused settings."""
    workdir = runs.copy_of(reference, "refused")
    before = digests(workdir)
    done = runs.train(workdir, "EncoderConfig.pooling='last'")
    assert done.returncode == 2
    assert done.stderr.startswith("ff-jax train: incompatible workdir:") and "'pooling': 'last'" in done.stderr
    assert digests(workdir) == before  # config.gin, run.json, checkpoints, logs: byte for byte
    assert "last" not in (workdir / "config.gin").read_text()  # what `ff-jax embed --workdir` reads
    # A fresh workdir refused by a later check (the step's memory) is not even created.
    fresh = runs.root / "refused_fresh"
    done = runs.train(fresh, "train.memory_limit_gb=1e-6")
    assert done.returncode == 2 and "ff-jax train: step too large:" in done.stderr
    assert not fresh.exists()


def _nan_run(runs, name: str, *bindings: str):
    """A learning rate that overflows the parameters within a few steps (warm-up: step 1 has lr 0)."""
    workdir = runs.root / name
    done = runs.train(workdir, "OptimizerConfig.learning_rate=1e20", *bindings)
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("ff-jax train: non-finite loss: step "), done.stderr[-3000:]
    bad = int(message.split("non-finite loss: step ")[1].split(":")[0])
    records = [r for r in _logged(workdir) if r["split"] == "train"]
    assert records[-1]["step"] == bad and not np.isfinite(records[-1]["loss"])  # stopped right there
    kept = checkpoint_steps(workdir)
    assert kept and max(kept) < bad  # never checkpointed
    assert f"the newest good checkpoint is step {max(kept)} ({workdir / 'checkpoints' / str(max(kept))})" in message
    for step in kept:
        Checkpointer(workdir / "checkpoints").verify(step)
        assert_finite_checkpoint(workdir / "checkpoints" / str(step))
    return done.stderr, message, bad, records


def test_a_non_finite_loss_stops_training_naming_the_step_and_the_last_good_checkpoint(runs):
    """Was: training went on with loss NaN, exited 0 and saved NaN checkpoints over the good ones."""
    _, message, bad, records = _nan_run(runs, "nan")
    assert all(r["finite"] == 1.0 for r in records[:-1]) and records[-1]["finite"] == 0.0
    assert "nothing of this step was saved" in message and "train.max_skipped_steps=N" in message


def test_skipped_non_finite_steps_are_counted_and_bounded(runs):
    stderr, message, bad, records = _nan_run(runs, "nan_skipped", "train.max_skipped_steps=2")
    skipped = [r["step"] for r in records if r["finite"] == 0.0]
    assert skipped == [bad - 2, bad - 1, bad]
    for n, step in enumerate(skipped[:2], 1):
        assert f"step {step}: loss nan" in stderr and f"its update was skipped ({n} of at most 2)" in stderr
    assert "2 earlier step(s) skipped, train.max_skipped_steps=2" in message


def test_a_skipped_step_leaves_the_state_as_if_its_batch_had_not_been_there():
    """With skip_nonfinite a step whose loss is NaN (a bad log q in one example) keeps the state it
    started from: good, bad, good ends exactly where good, good does; without it, NaN everywhere."""
    from ff_jax.model import Llama, make_mesh, presets
    from ff_jax.model.sharding import create_sharded
    from ff_jax.train import step as steps
    from ff_jax.train.dual_encoder import DualEncoder, EncoderConfig, Scoring
    from ff_jax.train.losses import InfoNCE
    from ff_jax.train.optimizer import OptimizerConfig, make_optimizer
    from train_fakes import toy_batches

    loss = InfoNCE(logq_correction=True)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    model = create_sharded(lambda: DualEncoder(Llama(presets.tiny(vocab_size=512), rngs=nnx.Rngs(0)), EncoderConfig(),
                                               Scoring.for_loss(loss), rngs=nnx.Rngs(1)), mesh)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10))
    graphdef, initial, shardings = steps.init_train_state(model, tx, 0, 0, mesh)
    good = [b.replace(positive_log_q=np.full(b.example_mask.shape, -3.0, np.float32),
                      negative_log_q=np.full(b.negative_slot.shape, -3.0, np.float32))
            for b in toy_batches(2, num_shards=1, per_shard=4, hard_negatives=1)]
    bad = good[0].replace(positive_log_q=np.where(np.arange(4) == 2, np.nan, -3.0).astype(np.float32)[None])
    sharding = steps.batch_shardings(good[0], mesh)

    def run(skip: bool, batches):
        step_fn, _ = steps.jit_steps(graphdef, steps.StepConfig(loss, tx, 3, 3, skip_nonfinite=skip), shardings,
                                     sharding, mesh)
        state, flags = jax.tree.map(jnp.copy, initial), []
        for batch in batches:
            state, metrics = step_fn(state, steps.device_batch(batch, sharding))
            flags.append(bool(metrics["finite"]))
        return state, flags

    skipped, flags = run(True, [good[0], bad, good[1]])
    assert flags == [True, False, True]
    plain, _ = run(True, [good[0], good[1]])
    for a, b in zip(jax.tree.leaves((skipped.params, skipped.opt_state)), jax.tree.leaves((plain.params,
                                                                                             plain.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    poisoned, flags = run(False, [good[0], bad])
    assert flags == [True, False]
    assert not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(poisoned.params))


def test_sigterm_during_validation_stops_promptly_after_saving_that_step(runs, reference):
    """Was: SIGTERM (from `timeout`) during a long final validation did not stop `ff-jax train` for
    25 minutes. Here validation never ends: only the signal can end the run, and it must save the
    step first (3: not a scheduled save) so a resumed run continues the uninterrupted loss curve."""
    started = runs.root / "validation_started"
    endless = Runs(runs.root, "import endless_validation\ntrain.data = @EndlessValidationData()\n"
                              f"EndlessValidationData.started_file = '{started}'\ntrain.eval_every = 3\n",
                   name="endless")
    workdir = runs.root / "sigterm"
    proc = subprocess.Popen(endless.command(workdir), env=endless.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)  # a hang guard, not a timing threshold
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert f"SIGTERM: training stopped at step 3; the newest good checkpoint is step 3" in stderr
    assert [r["step"] for r in _logged(workdir) if r["split"] == "validation"] == []
    assert 3 in checkpoint_steps(workdir)
    Checkpointer(workdir / "checkpoints").verify(3)

    done = endless.train(workdir, "train.eval_every=-1")  # resume, without the endless validation
    assert done.returncode == 0, done.stderr[-3000:]
    expected = dict(losses(reference))
    resumed = losses(workdir)
    assert [s for s, _ in resumed] == list(range(1, 9))
    for step, loss in resumed:
        np.testing.assert_allclose(loss, expected[step], rtol=1e-6, err_msg=f"step {step}")


def test_sigterm_between_steps_saves_the_step_it_stops_at(runs, reference):
    """Was: a SIGTERM that arrived after step 5's stop check, while the next batch was read, ended
    training at step 5 with checkpoint 4 the newest (5 is not a scheduled save): the step was lost
    (seen once as a flaky kill-and-resume test). Here the signal is raised at exactly that point."""
    signalling = Runs(runs.root, "import signal_on_fetch\ntrain.data = @SignalOnFetchData()\n",
                      name="signal_on_fetch")
    workdir = runs.root / "sigterm_between_steps"
    done = signalling.train(workdir, "SignalOnFetchData.sigterm_at_batch=6")  # the batch of step 6
    assert done.returncode == 0, done.stderr[-3000:]
    last = max(step for step, _ in losses(workdir))
    assert f"SIGTERM: training stopped at step {last}; the newest good checkpoint is step {last}" in done.stderr
    assert last in checkpoint_steps(workdir)
    Checkpointer(workdir / "checkpoints").verify(last)

    done = signalling.train(workdir)  # resume, no signal
    assert done.returncode == 0, done.stderr[-3000:]
    expected = dict(losses(reference))
    resumed = losses(workdir)
    assert [s for s, _ in resumed] == list(range(1, 9))  # nothing replayed: the stop lost no step
    for step, loss in resumed:
        np.testing.assert_allclose(loss, expected[step], rtol=1e-6, err_msg=f"step {step}")


def test_sigint_asks_to_stop_and_a_second_one_interrupts_at_once(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.signals.install()
    try:
        signal.raise_signal(signal.SIGINT)  # the handler runs before raise_signal returns
        assert ckpt.signals.requested() and ckpt.signals.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGINT) is previous
