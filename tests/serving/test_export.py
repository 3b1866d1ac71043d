"""The exported bundle: its towers give the checkpoint's embeddings (<= 1e-5, fp32), its prompts are
the training pipeline's, its index holds the corpus, and loading refuses a bundle with any file
flipped, truncated, deleted or added, a manifest edited, or an export that never finished."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ff_jax.files import MANIFEST, SEAL, sealed
from ff_jax.serving import bundle as layout
from ff_jax.serving.bundle import BundleError, load_bundle, read_manifest
from ff_jax.serving.prompting import HistoryItem, ServingPrompts, padded

from .conftest import TEMPLATE, tables


@pytest.fixture(scope="module")
def loaded(bundle_dir):
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def prompts(loaded):
    return ServingPrompts(loaded.prompts, loaded.tokenizer)


def checkpoint_model(run_dir, zero_shot=False):
    """The run's model as `ff-jax embed` restores it: training config, run mesh (8 devices)."""
    from ff_jax.model.sharding import logical_axis_rules
    from ff_jax.retrieval.embed_job import load_model
    from ff_jax.train.run import Run

    run = Run.open(run_dir)
    model, _, _ = load_model(run, zero_shot, None, run.spec.mesh_factory(), logical_axis_rules())
    return model


def reference_embeddings(model, tokens, segments):
    """DualEncoder.encode on the same right-padded rows, normalised in float64."""
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    raw = np.asarray(model.encode(tokens[None], segments[None], positions[None],
                                  np.arange(len(tokens), dtype=np.int32)[None], 1), np.float64)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def test_towers_give_the_checkpoint_embeddings(run_dir, loaded, prompts):
    from ff_jax.data import prepared as tb

    catalogue = loaded.catalogue
    item_ids = [prompts.item_token_ids([p])[0] for p in catalogue["prompt"][:12]]
    sources, _, _ = tb.open_prepared(run_dir.parent / "data", "serve_feed", "base")
    test = sources["test"]
    member_ids = [prompts.tokens.member(test[i]) for i in range(6)]
    model = checkpoint_model(run_dir)
    fresh = checkpoint_model(run_dir, zero_shot=True)
    for tower, ids in (("item", item_ids), ("member", member_ids)):
        tokens, segments = padded(ids, max(map(len, ids)) + 3, loaded.tokenizer.pad_id)
        got = loaded.embed(tower, tokens, segments)
        assert got.dtype == np.float32 and got.shape == (len(ids), loaded.embedding_dim)
        np.testing.assert_allclose(got, reference_embeddings(model, tokens, segments), atol=1e-5)
        # The weights are the checkpoint's, not the seeded initial model's.
        assert np.abs(got - reference_embeddings(fresh, tokens, segments)).max() > 1e-2
        # Any batch size and length: one row alone, padded further, is the same vector.
        alone, alone_segments = padded(ids[:1], tokens.shape[1] + 17, loaded.tokenizer.pad_id)
        np.testing.assert_allclose(loaded.embed(tower, alone, alone_segments)[0], got[0], atol=1e-5)


def test_the_catalogue_carries_each_items_creation_time_and_author(loaded):
    """From the items table through the prepared corpus into the bundle; an unknown time is null."""
    items = tables().items.set_index("item_id")
    catalogue = loaded.catalogue.set_index("item_id").loc[items.index]
    assert catalogue["author"].tolist() == items["author"].tolist()
    assert catalogue["created_at"].tolist()[:39] == items["created_at"].tolist()[:39]
    assert catalogue.loc["p39", "created_at"] is pd.NA and items.loc["p39", "created_at"] is pd.NA


def test_the_index_holds_each_catalogue_item_under_its_own_vector(loaded, prompts):
    catalogue = loaded.catalogue
    ids = prompts.item_token_ids(catalogue["prompt"].tolist())
    tokens, segments = padded(ids, max(map(len, ids)), loaded.tokenizer.pad_id)
    vectors = loaded.embed("item", tokens, segments)
    scores, found = loaded.index.search(vectors, k=1)
    assert found[:, 0].tolist() == catalogue["item_id"].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)  # packed embed job = padded tower


def test_prompts_are_the_training_pipelines(run_dir, loaded, prompts):
    """Catalogue history pieces and member prompts from request fields equal what the dataset rendered."""
    from ff_jax.data import prepared as tb
    from ff_jax.data.prompts import PromptRenderer

    feed = tables()
    _, _, metadata = tb.open_prepared(run_dir.parent / "data", "serve_feed", "base")
    from ff_jax.data.quantizer import Quantizer

    renderer = PromptRenderer(feed.schema, TEMPLATE, Quantizer.from_dict(metadata["quantizer"]))
    expected = renderer.history_pieces(feed.items)
    prompt_of = dict(zip(loaded.catalogue["item_id"], loaded.catalogue["prompt"]))
    assert any(len(p) > TEMPLATE.history_text_chars + 20 for p in prompt_of.values())  # texts really get cut
    for item_id, piece in expected.items():
        assert prompts.history_piece(prompt_of[item_id]) == piece, item_id
    # New items rendered from their fields are the dataset's item prompts.
    rows = feed.items.drop(columns=["item_id"]).to_dict("records")
    rows = [{k: v for k, v in r.items() if k in ("topic", "likes", "author", "text")} for r in rows]
    assert prompts.item_prompts(rows) == [prompt_of[i] for i in feed.items["item_id"]]

    sources, _, _ = tb.open_prepared(run_dir.parent / "data", "serve_feed", "base")
    users = feed.users.set_index("user_id")
    test = sources["test"]
    checked = 0
    for i in range(len(test)):
        record = test[i]
        user = record["user_id"]
        history = [HistoryItem(item_id=x) for x in reversed(record["engaged_history_ids"])]
        profile = {"headline": users.loc[user, "headline"], "age": float(users.loc[user, "age"])}
        got = prompts.member_token_ids(profile, history, prompt_of)
        np.testing.assert_array_equal(got, prompts.tokens.member(record))
        checked += len(history) > 0
    assert checked >= 5


def test_manifest_records_versions_files_and_model(bundle_dir, loaded):
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    import jax

    assert manifest["jax"] == jax.__version__ and manifest["platforms"] == ["cpu", "cuda"]
    assert manifest["calling_convention"] >= 9 and manifest["created"].endswith("Z")
    assert manifest["model"]["backbone"]["hidden_size"] == 64 and manifest["model"]["origin"]["step"] == 0
    listed = set(manifest["files"])
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == on_disk and "index/manifest.json" in listed
    for name, entry in manifest["files"].items():
        assert (bundle_dir / name).stat().st_size == entry["size"]
    # Weights are arguments, not constants: the programs are far smaller than the weights.
    weights = (bundle_dir / layout.WEIGHTS).stat().st_size
    assert all((bundle_dir / layout.function_file(t)).stat().st_size < weights / 5 for t in layout.TOWERS)
    assert layout.custom_calls(loaded.functions["member"]) <= layout.ALLOWED_CUSTOM_CALLS


# ----------------------------------------------------------------------------- tampering

KINDS = [layout.function_file("member"), layout.function_file("item"), layout.WEIGHTS, "tokenizer/ff_jax_tokenizer.json",
         layout.PROMPTS, layout.CATALOGUE, "index/ids.npy", "index/corpus.npy", "index/manifest.json"]


@pytest.fixture
def copy(bundle_dir, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    return target


@pytest.mark.parametrize("name", KINDS)
def test_a_flipped_byte_is_refused_naming_the_file(copy, name):
    file = copy / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{file}: checksum mismatch"):
        load_bundle(copy)


@pytest.mark.parametrize("name", KINDS)
def test_a_truncated_file_is_refused_naming_the_file(copy, name):
    file = copy / name
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size // 2)
    with pytest.raises(BundleError, match=f"{file}: .* bytes, the manifest says"):
        load_bundle(copy)


@pytest.mark.parametrize("name", KINDS)
def test_a_deleted_file_is_refused_naming_the_file(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=f"{copy / name}: listed in the manifest but missing"):
        load_bundle(copy)


def test_an_added_file_is_refused(copy):
    (copy / "functions" / "ranker.jaxexport").write_bytes(b"not listed")
    with pytest.raises(BundleError, match="ranker.jaxexport: not listed in the manifest"):
        load_bundle(copy)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(version=99), "bundle format 99 is newer"),
    (lambda m: m.update(jax="99.0.0"), "exported with jax 99.0.0, newer than"),
    (lambda m: m.update(calling_convention=1), "calling convention 1 is outside"),
    (lambda m: m.update(format="something.else"), "not an ff_jax.serving.bundle manifest"),
    (lambda m: m.pop("weights"), "field 'weights' is missing"),
    (lambda m: m["files"][layout.PROMPTS].update(sha256="0" * 64), "prompts.json: checksum mismatch"),
    (lambda m: m.update(platforms=["tpu"]), "exported for \\['tpu'\\], not for this host's cpu"),
])
def test_a_manifest_of_another_export_is_refused(copy, edit, message):
    """Manifests as another jax, format or platform would write them (sealed): each check names the field."""
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest)
    (copy / MANIFEST).write_text(json.dumps(sealed({k: v for k, v in manifest.items() if k != SEAL})))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(items=59),
    lambda m: m["model"]["backbone"].update(hidden_size=128),
    lambda m: m["files"].pop(layout.PROMPTS),
    lambda m: m.update(created="2000-01-01T00:00:00Z"),
    lambda m: m.pop(SEAL),
])
def test_a_hand_edited_manifest_is_refused_by_name(copy, edit):
    """Issue 26 row 2: was served (an edited "items" or hidden_size reached the server unnoticed)."""
    manifest = json.loads((copy / MANIFEST).read_text())
    edit(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest, indent=1))
    with pytest.raises(BundleError, match=f"{copy / MANIFEST}: (edited after it was written|has no {SEAL})"):
        load_bundle(copy)


def test_a_manifest_that_is_not_json_or_absent_is_refused(copy):
    (copy / MANIFEST).write_text('{"format": ')
    with pytest.raises(BundleError, match=f"{copy / MANIFEST}: not valid JSON"):
        read_manifest(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="missing; not a bundle, or an export that did not finish"):
        read_manifest(copy)


def test_a_disallowed_custom_call_is_refused():
    """A program holding a kernel call outside the allow-list never enters (or leaves) a bundle."""
    import jax
    import jax.numpy as jnp
    from jax import export

    def kernel(x):
        return jax.ffi.ffi_call("my_triton_kernel", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)

    exported = export.export(jax.jit(kernel), platforms=("cpu",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call("my_triton_kernel")])(
        jax.ShapeDtypeStruct((3,), jnp.float32))
    assert "my_triton_kernel" in layout.custom_calls(exported)
    with pytest.raises(BundleError, match=r"custom call\(s\) \['my_triton_kernel'\] are not allowed"):
        layout.check_custom_calls(exported, "kernel")


# ----------------------------------------------------------------------------- the command


def test_export_killed_midway_leaves_nothing_that_loads(run_dir, tmp_path):
    """SIGKILL while the bundle is being written: no BUNDLE folder; exporting again works."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "bundle"
    process = subprocess.Popen([sys.executable, "-m", "ff_jax.cli", "export", f"--workdir={run_dir}", f"--out={out}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    staging = None
    while process.poll() is None and staging is None:
        staging = next(tmp_path.glob(".bundle.partial-*"), None)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staging is not None, process.stderr.read().decode()[-2000:]  # killed while writing, not before or after
    assert not out.exists()
    with pytest.raises(BundleError, match="no such bundle folder"):
        load_bundle(out)
    from ff_jax import cli

    assert cli.main(["export", f"--workdir={run_dir}", f"--out={out}"]) == 0
    assert load_bundle(out).index.count == 40


def test_export_refuses_an_existing_folder_and_runs_of_the_wrong_kind(bundle_dir, run_dir, ranker_dir, tmp_path,
                                                                     capsys):
    from ff_jax import cli

    assert cli.main(["export", f"--workdir={run_dir}", f"--out={bundle_dir}"]) == 2
    assert f"ff-jax export: bundle error: {bundle_dir}: already exists" in capsys.readouterr().err
    assert cli.main(["export", f"--workdir={run_dir}", f"--out={tmp_path / 'b'}", f"--ranker={run_dir}"]) == 2
    assert f"{run_dir}: no run.json (not a training run's workdir; expected a ranker)" in capsys.readouterr().err
    assert cli.main(["export", f"--workdir={ranker_dir}", f"--out={tmp_path / 'b'}"]) == 2
    assert f"{ranker_dir} holds a ranker run, not a dual encoder" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
