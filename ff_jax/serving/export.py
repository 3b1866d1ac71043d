"""`ff-jax export --workdir=RUN --out=BUNDLE`: a training run turned into a serving bundle.

The run's config.gin gives the model, data and token budgets (as for `ff-jax embed`); its newest
checkpoint (or `step`) gives the weights. The towers are exported with jax.export for every
platform in `platforms`, with symbolic batch and length, the weights an argument (so the program
holds no parameters and the weights file is checked like any other). The corpus is embedded by
ff_jax.retrieval.embed_job into `<workdir>/bundle_embeddings` (resumable; reused by a second
export of the same checkpoint) and indexed with `create_index` (its gin bindings apply).

Everything is written into a hidden folder beside BUNDLE, synced, and renamed to BUNDLE last, so
an export that crashes leaves no folder that `load_bundle` accepts. bundle.py holds the layout.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx
from jax import export
from safetensors.flax import save_file

from ff_jax import files
from ff_jax.data.pipeline import as_text
from ff_jax.data.prepared import CORPUS_VERSION, UNKNOWN_TIME
from ff_jax.files import MANIFEST, fsync_path
from ff_jax.model.sharding import logical_axis_rules, make_mesh
# Registers train_ranker, rerank_run and the losses a ranker run's config.gin names: `ff-jax export
# --ranker` opens that run (ff_jax.train.run.Run.open) before it loads the ranker.
from ff_jax.rank import evaluate as _rerank, train as _rank_train  # noqa: F401
from ff_jax.retrieval import create_index
from ff_jax.retrieval.embed_job import EmbedConfig, embed_towers, load_model
from ff_jax.retrieval.embedding_store import read_tower
from ff_jax.serving import bundle as layout
from ff_jax.serving.bundle import BundleError
from ff_jax.train.losses import l2_normalize
from ff_jax.train.run import DUAL_ENCODER, Run, check_kind

PLATFORMS = ("cpu", "cuda")
EMBEDDINGS = "bundle_embeddings"
# One dense attention tile: the tiled path picks its tiles with Python comparisons on the length,
# which a symbolic length cannot answer. The result is the same attention (a parity test checks).
SERVING_OVERRIDES = {"attention_chunk": 0, "remat": False}


def weight_name(path) -> str:
    """'backbone/layers/0/attn/q/kernel' for a state key path (the trailing `.value` dropped)."""
    keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")


def split_weights(model) -> tuple[nnx.GraphDef, list[str], dict[str, jax.Array], object]:
    """(graphdef, weight names in state order, {name: array}, state treedef)."""
    graphdef, state = nnx.split(model)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [weight_name(path) for path, _ in flat]
    if len(set(names)) != len(names):
        raise ValueError(f"model state paths collide as weight names: {names}")
    for name, (_, leaf) in zip(names, flat):
        if not isinstance(leaf, jax.Array) or jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            raise ValueError(f"model state {name} is {type(leaf).__name__}, not an array safetensors can hold")
    return graphdef, names, {n: leaf for n, (_, leaf) in zip(names, flat)}, treedef


def tower_function(graphdef, names: list[str], treedef):
    """(weights {name: array}, tokens, segment_ids [B, L]) -> unit embeddings float32 [B, E].

    Prompts are right-padded one per row (segment id 1 on tokens, 0 on padding): the packed-batch
    encoder with one segment per row and every example on its own row."""

    def tower(weights, tokens, segment_ids):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, [weights[n] for n in names]))
        batch, length = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        slot = jnp.arange(batch, dtype=jnp.int32)[None]
        return l2_normalize(model.encode(tokens[None], segment_ids[None], positions[None], slot, 1))

    return tower


def export_function(fn, args, platforms, what: str) -> export.Exported:
    """`fn` jitted and exported for `platforms` at the (possibly symbolic) shapes of `args`; only
    allow-listed custom calls may be in it."""
    exported = export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
    layout.check_custom_calls(exported, what)
    return exported


def weight_specs(weights: dict[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
    return {n: jax.ShapeDtypeStruct(w.shape, w.dtype) for n, w in weights.items()}


def export_towers(model, platforms=PLATFORMS) -> tuple[dict[str, export.Exported], dict[str, jax.Array]]:
    """The member and item towers exported for `platforms` (shared backbone: one program each),
    and the weights they take."""
    graphdef, names, weights, treedef = split_weights(model)
    batch, length = export.symbolic_shape("batch, length")
    prompts = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    fn = tower_function(graphdef, names, treedef)
    functions = {tower: export_function(fn, (weight_specs(weights), prompts, prompts), platforms, f"the {tower} tower")
                 for tower in layout.TOWERS}
    return functions, weights


def _item_catalogue(data) -> pd.DataFrame:
    """The corpus records as the catalogue: id, prompt, creation time and author, each null where
    the dataset does not know it (UNKNOWN_TIME, "")."""
    source = f"{data.dataset}_corpus"
    corpus = data.open_dataset(source)[0]["corpus"]
    records = [corpus[i] for i in range(len(corpus))]
    if records and not {"created_at", "author"} <= set(records[0]):
        raise BundleError(f"{data.data_dir}/{source}: a corpus prepared before records carried created_at and "
                          f"author; prepare it again (FeedData.prepare=True) at version {CORPUS_VERSION}")
    created = [int(r["created_at"]) for r in records]
    authors = [as_text(r["author"]) for r in records]
    return pd.DataFrame({"item_id": [as_text(r["item_id"]) for r in records],
                         "prompt": [as_text(r["item_prompt"]) for r in records],
                         "created_at": pd.Series([None if t == UNKNOWN_TIME else t for t in created], dtype="Int64"),
                         "author": pd.Series([a or None for a in authors], dtype="string")})


def _prompts_document(data) -> dict:
    _, fmt, metadata = data.open_dataset(data.dataset)
    batch = data.batch
    return {"template": metadata["template"], "schema": metadata["schema"], "quantizer": metadata["quantizer"],
            "prompt_format": fmt.to_dict(), "member_tokens": batch.member_tokens, "item_tokens": batch.item_tokens,
            "add_bos": batch.add_bos, "add_eos": batch.add_eos, "dataset": f"{data.dataset}/{data.config_name}"}


def _sync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, deepest first (the rename that publishes it comes after)."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        fsync_path(path)


def weight_table(weights: dict[str, jax.Array]) -> list[dict]:
    return [{"name": n, "dtype": str(w.dtype), "shape": list(w.shape)} for n, w in weights.items()]


def publish(out: Path, write, manifest: dict) -> None:
    """`write(folder)` into a hidden folder beside `out`, the manifest (sizes, checksums, creation
    time) last, everything synced, then renamed to `out`: a crash at any point leaves no `out`."""
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "functions").mkdir(parents=True)
    try:
        write(staging)
        manifest = {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "files": layout.file_table(staging)}
        files.write_manifest(staging / MANIFEST, files.sealed(manifest))  # refuses later edits (bundle.py)
        _sync_tree(staging)
        os.rename(staging, out)
        fsync_path(out.parent)  # the rename itself survives a power loss
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_bundle(run: Run, out: str | Path, *, step: int | None = None, platforms=PLATFORMS,
                  ranker=None, progress: bool = True) -> Path:
    """Writes the bundle of training run `run` to `out` (which must not exist yet). ranker: a
    ff_jax.serving.ranker.RankerExport to include."""
    workdir, out = run.workdir, Path(out)
    if out.exists():
        raise BundleError(f"{out}: already exists; export into a new folder")
    check_kind(workdir, DUAL_ENCODER, allow_new=True)  # a run.json-less workdir is a dual encoder's
    data = run.spec.data
    # The corpus, embedded by the embed job on the run's own mesh (resumable, reused on re-export).
    folders = embed_towers(run, EmbedConfig(towers=("item",), output=EMBEDDINGS, checkpoint_step=step,
                                            overwrite=True), progress)
    item_ids, item_vectors = read_tower(folders["item"])
    embedded_from = json.loads((folders["item"] / MANIFEST).read_text())["settings"]["model"]

    serving = Run(workdir, dataclasses.replace(run.spec, model_overrides={**run.spec.model_overrides,
                                                                         **SERVING_OVERRIDES}))
    mesh = make_mesh(num_devices=1)  # whole weights on one device: what gets written and served
    model, tokenizer, origin = load_model(serving, False, step, mesh, logical_axis_rules())
    if origin != embedded_from:
        raise BundleError(f"{workdir}: the checkpoint changed while exporting (embedded {embedded_from}, "
                          f"now {origin}); export again")
    functions, weights = export_towers(model, platforms)
    if ranker is not None and (ranker.tokenizer.vocab_size, ranker.tokenizer.markers) != (tokenizer.vocab_size,
                                                                                          tokenizer.markers):
        raise BundleError(f"{ranker.document['origin']['workdir']}: the ranker's tokenizer differs from the dual "
                          f"encoder's ({workdir}); train both on the same data and tokenizer")
    catalogue = _item_catalogue(data)
    if sorted(catalogue["item_id"]) != sorted(item_ids.tolist()):
        raise BundleError(f"{folders['item']}: embeddings do not cover the corpus of {data.dataset}")
    catalogue = catalogue.set_index("item_id").loc[item_ids.tolist()].reset_index()  # the index's order

    index = create_index().build(item_vectors, item_ids)
    manifest = {
        "format": layout.FORMAT, "version": layout.VERSION, **layout.jax_versions(),
        "calling_convention": functions["item"].calling_convention_version,
        "platforms": list(functions["item"].platforms),
        "model": {"backbone": dataclasses.asdict(model.backbone.config), "encoder": dataclasses.asdict(run.spec.encoder),
                  "embedding_dim": model.embedding_dim, "origin": origin, "workdir": str(workdir.absolute())},
        "weights": weight_table(weights), "items": len(catalogue),
    }
    if ranker is not None:
        manifest["model"]["ranker"] = {k: ranker.document[k] for k in ("backbone", "head", "origin",
                                                                       "retrieval_weight")}
        manifest["ranker_weights"] = weight_table(ranker.weights)

    def write(folder: Path) -> None:
        for tower, exported in functions.items():
            files.write_atomic(folder / layout.function_file(tower), bytes(exported.serialize()))
        save_file({n: np.asarray(w) for n, w in weights.items()}, str(folder / layout.WEIGHTS))
        tokenizer.save(folder / layout.TOKENIZER)
        files.write_atomic(folder / layout.PROMPTS, json.dumps(_prompts_document(data), indent=1, sort_keys=True))
        buffer = io.BytesIO()
        catalogue.to_parquet(buffer, index=False)
        files.write_atomic(folder / layout.CATALOGUE, buffer.getvalue())
        index.save(folder / layout.INDEX)
        if ranker is not None:
            for name, exported in ranker.functions.items():
                files.write_atomic(folder / layout.ranker_file(name), bytes(exported.serialize()))
            save_file({n: np.asarray(w) for n, w in ranker.weights.items()}, str(folder / layout.RANKER_WEIGHTS))
            files.write_atomic(folder / layout.RANKER, json.dumps(ranker.document, indent=1, sort_keys=True))

    publish(out, write, manifest)
    return out
