"""A serving bundle on disk: its layout, and loading it only when every file is whole.

    BUNDLE/
      manifest.json                  format, version, jax/jaxlib versions, calling convention,
                                     model configs, creation time, size + sha256 of every file
      functions/<tower>_tower.jaxexport   jax.export-serialised towers (symbolic batch and length,
                                     one program for every platform in the manifest)
      weights.safetensors            the dual encoder's state, passed to the towers as an argument
      tokenizer/                     Tokenizer.save (prompt markers included)
      prompts.json                   template, schema, quantiser, prompt format, token budgets
      catalogue.parquet              item_id, prompt, created_at, author (the corpus at export)
      index/                         the item index (Index.save, with its own manifest)
    and with a ranker (ff_jax.serving.ranker):
      functions/ranker_prefill.jaxexport, functions/ranker_score.jaxexport
      ranker_weights.safetensors     the cross-encoder's state
      ranker.json                    head, context and candidate budgets, question token ids

`ff_jax.serving.export` writes it into a temporary folder and renames it, so a folder without
manifest.json is an export that never finished. `load_bundle` checks the manifest against its own
sha256 (an edited field, a dropped file entry), every file against the manifest (size, then
sha256), refuses files the manifest does not list, versions this jax cannot run and custom calls
outside the allow-list, and names the file at fault.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Optional

import jax
import jaxlib
import numpy as np
import pandas as pd
from jax import export
from safetensors.flax import load_file

from ff_jax import files
from ff_jax.files import MANIFEST
from ff_jax.model.tokenizer import load_tokenizer
from ff_jax.retrieval import IndexFormatError, load_index

FORMAT = "ff_jax.serving.bundle"
# 2: the ranker's steps take batches of members (score: multi-candidate rows over gathered caches)
# 3: the manifest covers itself (files.SEAL), so an edited setting is refused like a flipped byte
VERSION = 3
RANKER_SINCE = 2  # the oldest format whose ranker steps this code runs
TOWERS = ("member", "item")
WEIGHTS = "weights.safetensors"
TOKENIZER = "tokenizer"
PROMPTS = "prompts.json"
CATALOGUE = "catalogue.parquet"
INDEX = "index"
RANKER_WEIGHTS = "ranker_weights.safetensors"
RANKER = "ranker.json"
RANKER_STEPS = ("prefill", "score")
# Custom calls a bundle may contain: jax.export's own shape checks. A Pallas/Triton kernel
# (tpu_custom_call, triton_kernel_call, __gpu$xla.gpu.triton) is tied to one chip and one
# compiler version, so it never enters a bundle.
ALLOWED_CUSTOM_CALLS = frozenset({"shape_assertion"})
_CUSTOM_CALL = re.compile(r"stablehlo\.custom_call\s+@([\w$.\-]+)|call_target_name\s*=\s*\"([^\"]+)\"")


class BundleError(ValueError):
    """A bundle that is missing, partial, tampered with, or made for another jax; names the file."""


def function_file(tower: str) -> str:
    return f"functions/{tower}_tower.jaxexport"


def ranker_file(step: str) -> str:
    return f"functions/ranker_{step}.jaxexport"


def custom_calls(exported: export.Exported) -> set[str]:
    """The custom-call targets in an exported program's StableHLO."""
    return {a or b for a, b in _CUSTOM_CALL.findall(exported.mlir_module())}


def check_custom_calls(exported: export.Exported, where: str) -> None:
    bad = sorted(custom_calls(exported) - ALLOWED_CUSTOM_CALLS)
    if bad:
        raise BundleError(f"{where}: custom call(s) {bad} are not allowed in a bundle "
                          f"(allowed: {sorted(ALLOWED_CUSTOM_CALLS)}; no Pallas/Triton kernels)")


def file_names(root: Path) -> list[str]:
    """Every file under `root` but its top-level manifest, as sorted relative paths."""
    names = (p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())
    return sorted(name for name in names if name != MANIFEST)


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file of the bundle (what the manifest lists)."""
    return {name: {"size": (root / name).stat().st_size, "sha256": files.sha256_file(root / name)}
            for name in file_names(root)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def read_manifest(root: Path) -> dict[str, Any]:
    """The bundle's manifest, after checking format, versions and every file it lists."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a bundle, or an export that did not finish")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an {FORMAT} manifest")
    for field, kind in (("version", int), ("files", dict), ("jax", str), ("jaxlib", str),
                        ("calling_convention", int), ("platforms", list), ("model", dict), ("weights", list)):
        if not isinstance(manifest.get(field), kind):
            raise BundleError(f"{path}: field '{field}' is missing or not a {kind.__name__}")
    if manifest["version"] > VERSION:
        raise BundleError(f"{path}: bundle format {manifest['version']} is newer than this ff_jax reads ({VERSION})")
    if _version(manifest["jax"]) > _version(jax.__version__):
        raise BundleError(f"{path}: exported with jax {manifest['jax']}, newer than the jax here "
                          f"({jax.__version__}); serialised programs only load in the same or a later jax")
    low, high = (export.minimum_supported_calling_convention_version,
                 export.maximum_supported_calling_convention_version)
    if not low <= manifest["calling_convention"] <= high:
        raise BundleError(f"{path}: calling convention {manifest['calling_convention']} is outside what "
                          f"jax {jax.__version__} runs ({low}..{high})")
    files.check_seal(path, manifest, BundleError)  # e.g. "items" or the model's hidden_size edited by hand
    listed = manifest["files"]
    for name, entry in listed.items():
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing")
        if file.stat().st_size != entry.get("size"):
            raise BundleError(f"{file}: {file.stat().st_size} bytes, the manifest says {entry.get('size')} "
                              "(truncated or modified)")
        files.verify(file, entry.get("sha256"), BundleError)
    extra = [name for name in file_names(root) if name not in listed]
    if extra:
        raise BundleError(f"{root / extra[0]}: not listed in the manifest ({len(extra)} unlisted file(s))")
    ranker = (RANKER_WEIGHTS, RANKER, *map(ranker_file, RANKER_STEPS)) if "ranker_weights" in manifest else ()
    if ranker and manifest["version"] < RANKER_SINCE:
        raise BundleError(f"{path}: bundle format {manifest['version']} holds ranker steps of another signature "
                          f"(format {RANKER_SINCE} batches members); export it again")
    for required in (WEIGHTS, PROMPTS, CATALOGUE, *map(function_file, TOWERS), *ranker):
        if required not in listed:
            raise BundleError(f"{path}: lists no {required}")
    return manifest


@dataclasses.dataclass
class Bundle:
    """A verified bundle in memory: call `embed(tower, tokens, segment_ids)` for unit vectors."""

    path: Path
    manifest: dict[str, Any]
    functions: dict[str, export.Exported]
    weights: dict[str, jax.Array]
    tokenizer: Any  # ff_jax.model.tokenizer.Tokenizer
    prompts: dict[str, Any]
    catalogue: pd.DataFrame
    index: Any  # ff_jax.retrieval.Index
    ranker: Optional[dict] = None  # {"functions", "weights", "document"} when the bundle has one

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["model"]["embedding_dim"])

    def embed(self, tower: str, tokens: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Unit-norm float32 [B, E] for right-padded prompts tokens/segment_ids int32 [B, L]
        (segment id 1 on a prompt's tokens, 0 on padding)."""
        return np.asarray(self.functions[tower].call(self.weights, tokens, segment_ids))


def load_bundle(path: str | Path) -> Bundle:
    """A bundle, verified file by file (see `read_manifest`), ready to serve on this host's backend."""
    root = Path(path)
    manifest = read_manifest(root)
    backend = export.default_export_platform()  # "cuda" on an NVIDIA host (jax.default_backend() says "gpu")
    if backend not in manifest["platforms"]:
        raise BundleError(f"{root / MANIFEST}: exported for {manifest['platforms']}, not for this host's {backend}")
    functions = {tower: _program(root / function_file(tower)) for tower in TOWERS}
    weights = _weights(root / WEIGHTS, manifest["weights"])
    ranker = None
    if "ranker_weights" in manifest:
        ranker = {"functions": {step: _program(root / ranker_file(step)) for step in RANKER_STEPS},
                  "weights": _weights(root / RANKER_WEIGHTS, manifest["ranker_weights"]),
                  "document": json.loads((root / RANKER).read_text())}
    try:
        index = load_index(root / INDEX)
    except IndexFormatError as err:
        raise BundleError(str(err)) from None
    prompts = json.loads((root / PROMPTS).read_text())
    catalogue = pd.read_parquet(root / CATALOGUE)
    if catalogue["item_id"].tolist() != [str(i) for i in index.ids.tolist()]:
        raise BundleError(f"{root / CATALOGUE}: item ids differ from the index's ({root / INDEX})")
    return Bundle(root, manifest, functions, weights, load_tokenizer(root / TOKENIZER), prompts, catalogue, index,
                  ranker)


def _program(file: Path) -> export.Exported:
    try:
        exported = export.deserialize(bytearray(file.read_bytes()))
    except Exception as err:  # noqa: BLE001  (flatbuffers raises assorted errors on bad bytes)
        raise BundleError(f"{file}: not a jax.export program this jax can read ({err})") from None
    check_custom_calls(exported, str(file))
    return exported


def _weights(file: Path, expected: list[dict]) -> dict[str, jax.Array]:
    """A safetensors file holding exactly the tensors the manifest lists, at their dtypes and shapes."""
    weights = load_file(str(file))
    if sorted(weights) != sorted(w["name"] for w in expected):
        raise BundleError(f"{file}: holds other tensors than the manifest lists")
    for entry in expected:
        got = weights[entry["name"]]
        if list(got.shape) != entry["shape"] or str(got.dtype) != entry["dtype"]:
            raise BundleError(f"{file}: {entry['name']} is {got.dtype}{list(got.shape)}, "
                              f"the manifest says {entry['dtype']}{entry['shape']}")
    return weights


def jax_versions() -> dict[str, str]:
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
