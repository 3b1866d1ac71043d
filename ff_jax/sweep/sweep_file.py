"""Reading a sweep file (configs/sweeps/*.toml) into a checked `Sweep`: its base gin file(s),
bindings for every run, seeds, and named variants or a grid's product. Also how a TOML value is
written as a gin flag value (`gin_text`), which the run commands use.

An optional top-level `resources = { cpus = 2, gpus = 1 }` is what each run asks a Ray cluster for
under `ff-jax sweep --ray` (a run is then a Ray task: Ray starts it once that much is free, and
hands it the GPUs it reserved via CUDA_VISIBLE_DEVICES). Either key may be left out; the defaults,
1 CPU and no GPU, are Ray's own for a task. The sequential path ignores it, and it is not part of
a run's commands, so changing it never re-runs a finished run."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any, Optional

from ff_jax.gin_cli import CONFIGS_DIR
from ff_jax.sweep.preparations import PREPARATIONS

SWEEPS_DIR = CONFIGS_DIR / "sweeps"
TOP_KEYS = {"description", "gin_file", "prepare", "seeds", "bindings", "embed", "eval", "variants", "grid",
            "resources"}
VARIANT_TABLES = ("embed", "eval", "data")  # sub-tables of a variant; every other key is a train binding
DATA_KEYS = {"numbers", "history_source"}  # a prepared dataset variant (needs `prepare`)
GIN_WORDS = {"True", "False", "None"}  # words gin reads as other than strings
DEFAULT_RESOURCES = {"cpus": 1.0, "gpus": 0.0}  # per run, under --ray (Ray's own default for a task)


class SweepFileError(ValueError):
    """A sweep file the sweep cannot run: the message names the file and the key."""

    label = "bad sweep file"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    train: dict[str, Any]  # gin name -> TOML value
    embed: dict[str, Any] = dataclasses.field(default_factory=dict)
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    description: str
    gin_files: tuple[str, ...]
    prepare: Optional[str]
    seeds: tuple[int, ...]
    train: dict[str, Any]
    embed: dict[str, Any]
    eval: dict[str, Any]
    variants: tuple[Variant, ...]
    resources: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RESOURCES))


def resolve(name: str) -> Path:
    """A sweep file by path, or by name in configs/sweeps/ (with or without .toml)."""
    for candidate in (Path(name), SWEEPS_DIR / name, SWEEPS_DIR / f"{name}.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"--sweep={name}: no such sweep file (looked in the current directory and {SWEEPS_DIR})")


def gin_text(value: Any, where: str, bare: bool = True) -> str:
    """A TOML value as a gin flag value: a gin reference (@name(), %MACRO) as it is; a word or path
    bare where `bare` (ff_jax.gin_cli reads those as strings, so commands stay readable), another
    string double-quoted; lists as tuples, tables as dicts."""
    if isinstance(value, str):
        if value[:1] in ("@", "%") or bare and re.fullmatch(r"[A-Za-z_./][\w./-]*", value) and value not in GIN_WORDS:
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, list):
        items = [gin_text(v, where, bare=False) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{gin_text(k, where, False)}: {gin_text(v, where, False)}" for k, v in value.items()) + "}"
    raise SweepFileError(f"{where}: {type(value).__name__} values have no gin form (use a string, number, bool, "
                         "list or table)")


def _table(raw: dict, key: str, path: Path) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise SweepFileError(f"{path}: `{key}` must be a table ([{key}]), not {type(value).__name__}")
    for name, v in value.items():
        gin_text(v, f"{path}: {key}.{name}")
    return value


def _variant(name: str, raw: Any, path: Path, prepare: Optional[str]) -> Variant:
    where = f"{path}: variants.{name}"
    if not isinstance(raw, dict):
        raise SweepFileError(f"{where} must be a table of gin bindings")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise SweepFileError(f"{where}: a variant name is a folder name: letters, digits, '_' and '-' only")
    tables = {k: raw.get(k, {}) for k in VARIANT_TABLES}
    for key, table in tables.items():
        if not isinstance(table, dict):
            raise SweepFileError(f"{where}.{key} must be a table")
        for binding, v in table.items():
            gin_text(v, f"{where}.{key}.{binding}")
    unknown = set(tables["data"]) - DATA_KEYS
    if unknown:
        raise SweepFileError(f"{where}.data: unknown key(s) {sorted(unknown)}; expected some of {sorted(DATA_KEYS)}")
    if tables["data"] and not prepare:
        raise SweepFileError(f"{where}.data needs a prepared dataset variant: set `prepare` "
                             f"(one of {sorted(PREPARATIONS)})")
    train = {k: v for k, v in raw.items() if k not in VARIANT_TABLES}
    for binding, v in train.items():
        gin_text(v, f"{where}.{binding}")
    return Variant(name, train, tables["embed"], tables["eval"], tables["data"])


def _grid_variants(grid: Any, path: Path) -> list[Variant]:
    """The product of the grid's lists; a variant is named by its values, e.g. NEGATIVES_2."""
    if not isinstance(grid, dict) or not grid:
        raise SweepFileError(f"{path}: [grid] must map gin names to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepFileError(f"{path}: grid.{key} must be a non-empty list of values")
        for v in values:
            gin_text(v, f"{path}: grid.{key}")
    variants = [Variant("", {})]
    for key, values in grid.items():
        short = key.split(".")[-1]
        variants = [Variant("-".join(filter(None, [v.name, f"{short}_{_slug(value)}"])), {**v.train, key: value})
                    for v in variants for value in values]
    return variants


def _slug(value: Any) -> str:
    text = str(value).lstrip("@%").replace("()", "")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _resources(raw: Any, path: Path) -> dict[str, float]:
    """`resources = { cpus = N, gpus = M }`: what one run asks Ray for (fractions allowed, as in Ray)."""
    if raw is None:
        return dict(DEFAULT_RESOURCES)
    if not isinstance(raw, dict) or set(raw) - set(DEFAULT_RESOURCES):
        raise SweepFileError(f"{path}: resources must be a table with some of {sorted(DEFAULT_RESOURCES)}, "
                             f"e.g. resources = {{ cpus = 2, gpus = 1 }}; got {raw!r}")
    out = dict(DEFAULT_RESOURCES)
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SweepFileError(f"{path}: resources.{key} must be a number >= 0, got {value!r}")
        out[key] = float(value)
    return out


def load(name: str) -> Sweep:
    """The sweep file `name` (a path or a name in configs/sweeps/), checked."""
    path = resolve(name)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SweepFileError(f"{path}: not valid TOML: {err}") from None
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SweepFileError(f"{path}: unknown key(s) {sorted(unknown)}; expected some of {sorted(TOP_KEYS)}")
    gin_files = raw.get("gin_file")
    gin_files = [gin_files] if isinstance(gin_files, str) else gin_files
    if not gin_files or not all(isinstance(f, str) for f in gin_files):
        raise SweepFileError(f"{path}: gin_file must name the base experiment (a string or a list of strings)")
    prepare = raw.get("prepare")
    if prepare is not None and prepare not in PREPARATIONS:
        raise SweepFileError(f"{path}: prepare = {prepare!r}; expected one of {sorted(PREPARATIONS)}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds) or len(set(seeds)) < len(seeds):
        raise SweepFileError(f"{path}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
    if ("variants" in raw) == ("grid" in raw):
        raise SweepFileError(f"{path}: give either [variants.NAME] tables or one [grid] (not both, not neither)")
    if "grid" in raw:
        variants = _grid_variants(raw["grid"], path)
    else:
        if not isinstance(raw["variants"], dict) or not raw["variants"]:
            raise SweepFileError(f"{path}: [variants.NAME] tables of gin bindings expected")
        variants = [_variant(n, v, path, prepare) for n, v in raw["variants"].items()]
    return Sweep(path.stem, path, str(raw.get("description", "")), tuple(gin_files), prepare, tuple(seeds),
                 _table(raw, "bindings", path), _table(raw, "embed", path), _table(raw, "eval", path),
                 tuple(variants), _resources(raw.get("resources"), path))
