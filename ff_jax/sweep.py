"""`ff-jax sweep`: variants x seeds of one experiment, each trained, embedded and evaluated by
ordinary `ff-jax` commands in a workdir of its own, then summarised.

    ff-jax sweep --sweep=pooling_feed_world              # configs/sweeps/pooling_feed_world.toml
    ff-jax sweep --sweep=pooling_feed_world --dry_run    # the commands, one per line, for a scheduler

A sweep file is a small TOML file in configs/sweeps/ (format in docs/experiments.md): the base gin
file(s), bindings for every run, `seeds`, and either named `[variants.NAME]` tables of gin bindings
or a `[grid]` whose lists are crossed. TOML rather than gin because gin binds the values of one
program, while a sweep is a list of programs; TOML is read by the standard library (tomllib) and,
unlike JSON, takes comments.

Each run is three subprocesses (`ff-jax train`, `embed`, `eval`), exactly what a user could type,
so a crash of one run leaves the others running and `--dry_run` prints the same commands. A run is
finished when its workdir's sweep_run.json lists the same commands and the sha256 of the eval
results it recorded still matches `eval/metrics_test.json`; finished runs are skipped, so the same
command again resumes a sweep (an interrupted `ff-jax train` resumes from its checkpoint). Results go to
`<results_dir>/<sweep>/`: per run a copy of its eval results, metrics.jsonl and a few members' top
items with text (runs/), then summary.csv (one row per run), summary.md (mean ± sample std over
seeds) and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ff_jax.files import sha256_file, write_atomic
from ff_jax.gin_cli import CONFIGS_DIR

SWEEPS_DIR = CONFIGS_DIR / "sweeps"
RECORD = "sweep_run.json"  # in each run's workdir: its commands, stage times and eval checksum
EVAL_FILE = Path("eval") / "metrics_test.json"
STAGES = ("train", "embed", "eval")
TOP_KEYS = {"description", "gin_file", "prepare", "seeds", "bindings", "embed", "eval", "variants", "grid"}
VARIANT_TABLES = ("embed", "eval", "data")  # sub-tables of a variant; every other key is a train binding
DATA_KEYS = {"numbers", "history_source"}  # a prepared dataset variant (needs `prepare`)
GIN_WORDS = {"True", "False", "None"}  # words gin reads as other than strings


class SweepFileError(ValueError):
    """A sweep file the sweep cannot run: the message names the file and the key."""

    label = "bad sweep file"


class SweepError(ValueError):
    """A sweep that cannot go on as asked (a workdir holding another run, failed runs)."""

    label = "sweep failed"


# ----------------------------------------------------------------------------- the sweep file


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
                 tuple(variants))


# ----------------------------------------------------------------------------- data preparation


def _compact_paths(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> tuple[Path, str, str, Path]:
    """(DATA_DIR, DATASET_CONFIG, the config built (with _<numbers>), its tokenizer) of compact feed_world."""
    from ff_jax.data.compact_feed_world import CONFIG_NAME

    root = data_dir / "compact_feed_world"
    config = CONFIG_NAME + (f"_{history}" if history else "")
    built = config + (f"_{numbers}" if numbers else "")
    return root, config, built, root / ("tokenizer.json" if built == CONFIG_NAME else f"tokenizer_{built}.json")


def _prepare_compact_feed_world(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> None:
    """feed_world "tiny" with compact prompts (ff_jax.data.compact_feed_world) in the variant asked
    for, with a word-level tokenizer fitted to that variant's own prompts (raw counts are words too)."""
    from ff_jax.data import compact_feed_world, tfds_builders

    root, _, built, tokenizer = _compact_paths(data_dir, numbers, history)
    if tokenizer.exists() and all(tfds_builders.is_prepared(root, n, built) for n in ("feed_world", "feed_world_corpus")):
        return
    if built == compact_feed_world.CONFIG_NAME:
        compact_feed_world.prepare(root)
        return
    base = {c.name: c for c in tfds_builders.FeedWorld.BUILDER_CONFIGS}["tiny"]
    template = dataclasses.replace(compact_feed_world.COMPACT, history_source=history or "positives")
    variant = dataclasses.replace(base, name=built, template=template, numbers=numbers or "quantile")
    for name in ("feed_world", "feed_world_corpus"):
        tfds_builders.build(name, variant, root)
    corpus = tfds_builders.open_prepared(root, "feed_world_corpus", built)[0]["corpus"]
    compact_feed_world.fit_word_tokenizer([corpus[i]["item_prompt"].decode() for i in range(len(corpus))], tokenizer)


def _prepare_movielens(data_dir: Path, numbers: Optional[str], history: Optional[str]) -> None:
    """MovieLens-100k with all rated films in the history ("100k_impressions"); the plain and
    numbers variants FeedData prepares itself on first use."""
    from ff_jax.data import tfds_builders

    if not history:
        return
    built = f"100k_{history}" + (f"_{numbers}" if numbers else "")
    base = tfds_builders.MovielensFeed.BUILDER_CONFIGS[0]
    variant = dataclasses.replace(base, name=built, numbers=numbers or "quantile",
                                  template=dataclasses.replace(base.template, history_source=history))
    for name in ("movielens_feed", "movielens_feed_corpus"):
        tfds_builders.build(name, variant, data_dir)


# `prepare = NAME` in a sweep file: (data_dir, numbers, history_source) -> None, building the
# dataset variant a run's [variants.X.data] asks for (a prepared one is reused).
PREPARATIONS: dict[str, Callable[[Path, Optional[str], Optional[str]], None]] = {
    "compact_feed_world": _prepare_compact_feed_world, "movielens": _prepare_movielens}


def _data_key(variant: Variant) -> tuple[Optional[str], Optional[str]]:
    return variant.data.get("numbers"), variant.data.get("history_source")


def data_bindings(sweep: Sweep, variant: Variant, data_dir: Path) -> dict[str, Any]:
    """The bindings that point a run at its data (computed, nothing prepared: --dry_run uses them)."""
    numbers, history = _data_key(variant)
    if sweep.prepare == "compact_feed_world":
        root, config, _, tokenizer = _compact_paths(data_dir, numbers, history)
        out: dict[str, Any] = {"DATA_DIR": str(root), "TOKENIZER": str(tokenizer), "DATASET_CONFIG": config}
    elif sweep.prepare == "movielens":
        out = {"DATA_DIR": str(data_dir), "DATASET_CONFIG": "100k" + (f"_{history}" if history else "")}
    else:
        out = {"DATA_DIR": str(data_dir)}
    return {**out, **({"FeedData.numbers": numbers} if numbers else {})}


def prepare_data(sweep: Sweep, data_dir: Path, log: Callable[[str], None] = print) -> None:
    """Prepares every dataset variant the sweep's runs read (each once; a prepared one is reused)."""
    if not sweep.prepare:
        return
    for numbers, history in dict.fromkeys(_data_key(v) for v in sweep.variants):
        log(f"preparing {sweep.prepare} (numbers {numbers or 'quantile'}, history {history or 'positives'}) "
            f"under {data_dir}")
        PREPARATIONS[sweep.prepare](data_dir, numbers, history)


# ----------------------------------------------------------------------------- the runs


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # <variant>_seed<seed>: its folder under the sweep's workdir and results
    variant: Variant
    seed: int
    workdir: Path
    commands: tuple[tuple[str, ...], ...]  # train, embed, eval argv, "ff-jax" first

    @property
    def eval_file(self) -> Path:
        return self.workdir / EVAL_FILE


def _flags(bindings: dict[str, Any], where: str) -> list[str]:
    return [f"--gin.{k}={gin_text(v, f'{where}: {k}')}" for k, v in bindings.items()]


def plan(sweep: Sweep, workdir: Path, data_dir: Path, gin_files: Sequence[str] = (),
         bindings: Sequence[str] = (), multihost: bool = False) -> list[Run]:
    """Every run of the sweep (variants in file order, then seeds), with its commands. `gin_files`
    and `bindings` ("NAME=VALUE") are appended to every training command, last, so they win."""
    runs = []
    for variant in sweep.variants:
        for seed in sweep.seeds:
            name = f"{variant.name}_seed{seed}"
            run_dir = workdir / sweep.name / name
            train_bindings = {**data_bindings(sweep, variant, data_dir), **sweep.train, **variant.train,
                              "train.seed": seed, "FeedData.seed": seed}
            where = f"{sweep.path}: variants.{variant.name}"
            train = ["ff-jax", "train", *(["--distributed"] if multihost else []),
                     *(f"--gin_file={f}" for f in [*sweep.gin_files, *gin_files]), *_flags(train_bindings, where),
                     *(f"--gin.{b}" for b in bindings), f"--workdir={run_dir}"]
            embed = ["ff-jax", "embed", *_flags({**sweep.embed, **variant.embed}, where), f"--workdir={run_dir}"]
            evaluate = ["ff-jax", "eval", *_flags({**sweep.eval, **variant.eval}, where), f"--workdir={run_dir}"]
            runs.append(Run(name, variant, seed, run_dir, (tuple(train), tuple(embed), tuple(evaluate))))
    return runs


def command_lines(sweep: Sweep, runs: Sequence[Run], data_dir: Path) -> list[str]:
    """What --dry_run prints: the data preparation (when the sweep has one), then each run's
    commands in order, one shell-quoted command per line."""
    lines = []
    if sweep.prepare:
        shown = os.path.relpath(sweep.path) if sweep.path.resolve().is_relative_to(Path.cwd()) else sweep.path
        lines.append(shlex.join(["ff-jax", "sweep", f"--sweep={shown}", "--prepare_only", f"--data_dir={data_dir}"]))
    return lines + [shlex.join(command) for run in runs for command in run.commands]


def _read_record(run: Run) -> Optional[dict]:
    path = run.workdir / RECORD
    if not path.exists():
        if run.workdir.exists() and any(run.workdir.iterdir()):
            raise SweepError(f"{run.workdir}: not empty and holds no {RECORD}; it is not this sweep's run "
                             "(move it away, or give the sweep another --workdir)")
        return None
    record = json.loads(path.read_text())
    now = [list(c) for c in run.commands]
    if now != record["commands"]:
        was = next((c for c, n in zip(record["commands"], now) if c != n), record["commands"][0])
        raise SweepError(f"{run.workdir}: holds a run of other commands (was: {shlex.join(was)}); the sweep file "
                         "or flags changed: remove that workdir to run it again, or rename the variant")
    return record


def is_finished(run: Run) -> bool:
    """Its eval results exist and are the ones its recorded commands produced."""
    record = _read_record(run)
    return bool(record and record.get("eval_sha256") and run.eval_file.exists()
                and sha256_file(run.eval_file) == record["eval_sha256"])


def _write_record(run: Run, record: dict) -> None:
    write_atomic(run.workdir / RECORD, json.dumps(record, indent=1))


def _executable() -> str:
    """ff-jax beside the running interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "ff-jax"
    found = str(beside) if beside.exists() else shutil.which("ff-jax")
    if not found:
        raise FileNotFoundError("ff-jax: not found beside the Python interpreter nor on PATH (pip install -e .)")
    return found


def execute(run: Run, sweep_name: str, log: Callable[[str], None] = print) -> bool:
    """Runs the run's three commands in order, each a subprocess logging to <workdir>/logs/;
    records their wall times. Returns False (and logs where to look) if one fails."""
    record = _read_record(run) or {"sweep": sweep_name, "run": run.name, "variant": run.variant.name,
                                   "seed": run.seed, "bindings": run.variant.train, "data": run.variant.data,
                                   "commands": [list(c) for c in run.commands], "seconds": {}}
    record.pop("eval_sha256", None)
    (run.workdir / "logs").mkdir(parents=True, exist_ok=True)
    _write_record(run, record)
    for stage, command in zip(STAGES, run.commands):
        log_file = run.workdir / "logs" / f"{stage}.log"
        start = time.perf_counter()
        with open(log_file, "a") as out:
            out.write(f"$ {shlex.join(command)}\n")
            out.flush()
            code = subprocess.run([_executable(), *command[1:]], stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        record["seconds"][stage] = record["seconds"].get(stage, 0.0) + seconds  # summed over attempts
        _write_record(run, record)
        if code != 0:
            log(f"  {run.name}: `ff-jax {stage}` exited {code} after {seconds:.0f} s; see {log_file}")
            return False
        log(f"  {run.name}: {stage} {seconds:.0f} s")
    record["eval_sha256"] = sha256_file(run.eval_file)
    _write_record(run, record)
    return True


# ----------------------------------------------------------------------------- results of one run


def top_items(workdir: Path, members: int = 3, k: int = 10) -> dict:
    """The first `members` evaluated test members with a target: their engaged history and their
    top-k items by the run's embeddings (text, cosine, whether held out as a target)."""
    from ff_jax.gin_cli import configured
    from ff_jax.retrieval.embed_job import train_arguments
    from ff_jax.retrieval.embedding_store import read_tower
    from ff_jax.retrieval.eval_data import feed_eval_data
    from ff_jax.retrieval.recommender import corpus_order

    with configured([str(workdir / "config.gin")]):
        data = train_arguments()["data"]
    training, split = feed_eval_data(data, "test")
    item_ids, items = read_tower(workdir / "embeddings" / "items")
    items = corpus_order(item_ids, items, training.corpus_ids, str(workdir / "embeddings" / "items"))
    member_ids, vectors = read_tower(workdir / "embeddings" / "members_test")
    rows = {m: i for i, m in enumerate(member_ids.tolist())}
    text = dict(zip(training.items["item_id"], training.items["text"]))
    out = []
    for member in [m for m in split if m.targets and m.user_id in rows][:members]:
        scores = items @ vectors[rows[member.user_id]]
        scores[training.positions(member.engaged_history)] = -np.inf  # as eval ranks: history excluded
        best = np.argsort(-scores, kind="stable")[:k]
        targets = set(member.targets)
        out.append({"user_id": member.user_id, "cohort": member.cohort,
                    "history": [{"item_id": i, "text": text[i]} for i in member.engaged_history[::-1][:k]],
                    "targets": [{"item_id": i, "text": text[i]} for i in member.targets],
                    "top": [{"item_id": training.corpus_ids[p], "text": text[training.corpus_ids[p]],
                             "score": float(scores[p]), "target": training.corpus_ids[p] in targets} for p in best]})
    return {"members": out, "k": k}


def collect(run: Run, results: Path) -> Path:
    """Copies what the summary and notebooks read into <results>/runs/<run>/."""
    out = results / "runs" / run.name
    out.mkdir(parents=True, exist_ok=True)
    for source, name in ((run.workdir / RECORD, RECORD), (run.eval_file, "metrics_test.json"),
                         (run.workdir / "metrics.jsonl", "metrics.jsonl")):
        write_atomic(out / name, source.read_bytes())
    write_atomic(out / "examples.json", json.dumps(top_items(run.workdir), indent=1))
    return out


# ----------------------------------------------------------------------------- summary


def flatten_metrics(report: dict) -> dict[str, float]:
    """An eval report (metrics_test.json) as flat columns: test/<metric>/<cohort>/d<width>,
    test/popularity_<kind>, test/ann_recall@K, baseline/<name>/<metric>/<cohort>."""
    out = {}
    for dim, by_dim in report["by_dim"].items():
        for cohort, values in by_dim["metrics"].items():
            out.update({f"test/{m}/{cohort}/d{dim}": float(v) for m, v in values.items() if m != "users"})
    for kind in ("spearman", "pearson_log"):
        if kind in report.get("popularity_similarity", {}):
            out[f"test/popularity_{kind}"] = float(report["popularity_similarity"][kind])
    out.update({f"test/{k}": float(v) for k, v in report.get("ann", {}).items() if k.startswith("ann_recall")})
    for name, baseline in report.get("baselines", {}).items():
        for cohort, values in baseline["metrics"].items():
            out.update({f"baseline/{name}/{m}/{cohort}": float(v) for m, v in values.items() if m != "users"})
    return out


def last_logged(jsonl: Path) -> dict[str, float]:
    """The last validation record (validation/<key>) and the last training loss (train/loss)."""
    last: dict[str, dict] = {}
    for line in jsonl.read_text().splitlines():
        record = json.loads(line)
        last[record.get("split", "train")] = record
    out = {f"validation/{k}": float(v) for k, v in last.get("validation", {}).items() if k not in ("step", "split")}
    if "loss" in last.get("train", {}):
        out["train/loss"] = float(last["train"]["loss"])
        out["train/steps"] = float(last["train"]["step"])
    return out


def summary_rows(runs: Sequence[Run], results: Path) -> pd.DataFrame:
    """One row per run with results under <results>/runs/: variant, seed, its bindings, stage
    seconds and every metric."""
    rows = []
    for run in runs:
        folder = results / "runs" / run.name
        if not (folder / "metrics_test.json").exists():
            continue
        record = json.loads((folder / RECORD).read_text())
        report = json.loads((folder / "metrics_test.json").read_text())
        row: dict[str, Any] = {"variant": run.variant.name, "seed": run.seed, "width": report["width"]}
        row.update({f"bind:{k}": gin_text(v, k) for k, v in run.variant.train.items()})
        row.update({f"data:{k}": v for k, v in run.variant.data.items()})
        row.update({f"{stage}_seconds": round(record["seconds"].get(stage, math.nan), 1) for stage in STAGES})
        row.update(last_logged(folder / "metrics.jsonl"))
        row.update(flatten_metrics(report))
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (n - 1), n) of the finite values; std is NaN below 2."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(x):
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x)


def format_mean_std(values: Sequence[float]) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "—"
    digits = 1 if abs(mean) >= 10 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f} (1 seed)"


def headline_columns(table: pd.DataFrame) -> list[str]:
    """The rows of summary.md, in this order: test recall/NDCG at the full width (all members),
    recall@10 by cohort, recall@10 at every other width (Matryoshka slices), the popularity
    correlation, the baselines' recall@10, validation recall@10 per width (slices, PCA), the final
    training loss and the training time."""
    full = {f"d{w}" for w in table["width"].dropna().astype(int)} if "width" in table else set()
    groups: list[list[str]] = [[] for _ in range(7)]
    for column in table.columns:
        parts = column.split("/")
        if column.startswith("test/") and len(parts) == 4:
            _, metric, cohort, dim = parts
            if dim in full and metric in ("recall@10", "recall@100", "ndcg@10") and cohort == "all":
                groups[0].append(column)
            elif dim in full and metric == "recall@10":
                groups[1].append(column)
            elif metric == "recall@10" and cohort == "all":
                groups[2].append(column)
        elif column.startswith("test/popularity_"):
            groups[3].append(column)
        elif column.startswith("baseline/") and column.endswith("/recall@10/all"):
            groups[4].append(column)
        elif column.startswith("validation/recall@10"):
            groups[5].append(column)
        elif column in ("train/loss", "train_seconds"):
            groups[6].append(column)
    return [c for group in groups for c in group]


def summary_markdown(sweep: Sweep, table: pd.DataFrame) -> str:
    """Metrics (rows) by variant (columns), each cell the mean ± sample std over seeds."""
    variants = list(dict.fromkeys(table["variant"]))
    lines = [f"# Sweep `{sweep.name}`", "", sweep.description.strip(), "",
             f"Base: {', '.join(sweep.gin_files)}; seeds {list(sweep.seeds)}; cells are mean ± sample "
             "standard deviation over the seeds that finished.", ""]
    for v in sweep.variants:
        if v.name in variants:
            what = ", ".join(f"{k}={gin_text(x, k)}" for k, x in {**v.train, **v.data}.items()) or "the base"
            n = int((table["variant"] == v.name).sum())
            lines.append(f"- `{v.name}` ({n} run{'s' * (n != 1)}): {what}")
    lines += ["", "| metric | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for column in headline_columns(table):
        cells = [format_mean_std(table.loc[table["variant"] == v, column].tolist()) for v in variants]
        lines.append(f"| {column} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, out: Path) -> list[Path]:
    """recall.png (test recall@10 at full width: bars with the seed spread), recall_by_width.png
    (when several widths were measured) and popularity_correlation.png; returns what was written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(table["variant"]))
    written = []

    def bars(values_of, ylabel: str, name: str):
        fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(variants), 3.2))
        for x, v in enumerate(variants):
            values = [y for y in values_of(table[table["variant"] == v]) if np.isfinite(y)]
            mean, std, n = mean_std(values)
            ax.bar(x, mean, yerr=std if n > 1 else None, color="#8ab", capsize=4)
            ax.scatter([x] * len(values), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    def at_full_width(rows: pd.DataFrame, metric: str) -> list[float]:
        return [row.get(f"test/{metric}/all/d{int(row['width'])}", math.nan) for _, row in rows.iterrows()]

    bars(lambda rows: at_full_width(rows, "recall@10"), "test recall@10 (full width)", "recall.png")
    if "test/popularity_spearman" in table:
        bars(lambda rows: rows["test/popularity_spearman"].tolist(), "popularity–similarity Spearman",
             "popularity_correlation.png")
    widths = sorted({int(c.rsplit("/d", 1)[1]) for c in table.columns
                     if c.startswith("test/recall@10/all/d")})
    if len(widths) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for v in variants:
            rows = table[table["variant"] == v]
            points = [(w, mean_std(rows[f"test/recall@10/all/d{w}"].tolist())) for w in widths]
            points = [(w, m, s) for w, (m, s, n) in points if n]
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[0 if math.isnan(p[2]) else p[2] for p in points], marker="o", capsize=3, label=v)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding width")
        ax.set_ylabel("test recall@10")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "recall_by_width.png", dpi=110)
        plt.close(fig)
        written.append(out / "recall_by_width.png")
    return written


def summarize(sweep: Sweep, runs: Sequence[Run], results: Path) -> Optional[pd.DataFrame]:
    """summary.csv, summary.md and the plots of the runs with results; None when there are none."""
    table = summary_rows(runs, results)
    if table.empty:
        return None
    write_atomic(results / "summary.csv", table.to_csv(index=False))
    write_atomic(results / "summary.md", summary_markdown(sweep, table))
    plot(table, results)
    return table


# ----------------------------------------------------------------------------- the command


def run_sweep(sweep: Sweep, workdir: Path, results_dir: Path, data_dir: Path, gin_files: Sequence[str] = (),
              bindings: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
              log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Prepares the data, runs every unfinished run (of `seeds` only, when given), collects and
    summarises every run of the file that has results; returns the run names by outcome
    ("skipped", "ran", "failed"). Raises SweepError naming the failed runs at the end."""
    every = plan(sweep, workdir, data_dir, gin_files, bindings)
    runs = [r for r in every if seeds is None or r.seed in seeds]
    results = results_dir / sweep.name
    outcome: dict[str, list[str]] = {"skipped": [], "ran": [], "failed": []}
    todo = [r for r in runs if not is_finished(r)]
    if todo:
        prepare_data(sweep, data_dir, log)
    for i, run in enumerate(runs, 1):
        if run not in todo:
            outcome["skipped"].append(run.name)
            if not (results / "runs" / run.name / "metrics_test.json").exists():
                collect(run, results)
            continue
        log(f"[{i}/{len(runs)}] {run.name} in {run.workdir}")
        if execute(run, sweep.name, log):
            collect(run, results)
            outcome["ran"].append(run.name)
        else:
            outcome["failed"].append(run.name)
    table = summarize(sweep, every, results)
    log(f"{len(outcome['ran'])} ran, {len(outcome['skipped'])} already finished, {len(outcome['failed'])} failed"
        + (f"; summary: {results / 'summary.md'}" if table is not None else ""))
    if outcome["failed"]:
        raise SweepError(f"{len(outcome['failed'])} run(s) failed: "
                         + ", ".join(f"{n} (log: {workdir / sweep.name / n / 'logs'})" for n in outcome["failed"])
                         + "; the same command again re-runs only these")
    return outcome


def chosen_seeds(sweep: Sweep, seeds: Sequence[str]) -> tuple[int, ...]:
    """`--seeds`, which must be among the file's own (e.g. a first pass with one)."""
    try:
        chosen = tuple(int(s) for s in seeds)
    except ValueError:
        chosen = ()
    if not chosen or set(chosen) - set(sweep.seeds):
        raise SweepFileError(f"--seeds={','.join(map(str, seeds))}: {sweep.path} has seeds {list(sweep.seeds)}")
    return chosen


def main(args) -> None:
    """`ff-jax sweep` with its parsed flags (ff_jax/cli.py)."""
    if not args.sweep:
        raise SweepFileError("--sweep=NAME is required (a file in configs/sweeps/, e.g. --sweep=pooling_feed_world)")
    sweep = load(args.sweep)
    seeds = chosen_seeds(sweep, args.seeds) if args.seeds else None
    workdir, data_dir = Path(args.workdir), Path(args.data_dir)
    if args.multihost and not args.dry_run:
        raise SweepError("--multihost only shapes the printed commands: use it with --dry_run")
    if args.prepare_only:
        prepare_data(sweep, data_dir)
        return
    if args.dry_run:
        runs = plan(sweep, workdir, data_dir, args.gin_file or (), args.gin_bindings, args.multihost)
        print("\n".join(command_lines(sweep, [r for r in runs if seeds is None or r.seed in seeds], data_dir)))
        return
    run_sweep(sweep, workdir, Path(args.results_dir), data_dir, args.gin_file or (), args.gin_bindings, seeds)
