"""`tables` / `tables_corpus`: your own users / items / interactions files as a prepared dataset.

A folder holds `users`, `items` and `interactions` as .csv, .tsv, .csv.gz, .tsv.gz or .parquet
(one file each) and optionally `schema.json`. The builder config is named after the folder and
a sha256 over the files' bytes, schema.json and every option that changes the records
(TablesOptions, the prompt template, number mode, split settings), so changed files or
options are prepared anew and stale records are never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Optional

from ff_jax.data.feed_builder import VERSION, FeedConfig, _FeedBuilder, is_prepared, open_prepared
from ff_jax.data.prepare_engine import PrepareConfig
from ff_jax.data.prompts import PromptTemplate
from ff_jax.data.tables import FeedTables, LoadError, load_tables
from ff_jax.data.tables_options import TablesOptions

TABLE_FILES = ("users", "items", "interactions")
SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
KEY_VERSION = "tables-3"  # bump when a loading rule changes, so older preparations are not reused
# tables-3: 'nan', 'NA', ... no longer make an inferred column text (schema.MISSING_VALUES)


def find_table_files(folder: str | Path) -> dict[str, Path]:
    """{"users", "items", "interactions"[, "schema"]} -> file; errors name the folder and the names looked for."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder}: no such folder (TABLES must be a folder holding users / items / "
                        "interactions files)")
    found = {}
    for table in TABLE_FILES:
        files = [folder / f"{table}{s}" for s in SUFFIXES if (folder / f"{table}{s}").is_file()]
        if not files:
            raise LoadError(f"{folder}: no {table} file (expected one of "
                            f"{', '.join(table + s for s in SUFFIXES)})")
        if len(files) > 1:
            raise LoadError(f"{folder}: {' and '.join(f.name for f in files)} both hold {table}; keep one")
        found[table] = files[0]
    if (folder / "schema.json").is_file():
        found["schema"] = folder / "schema.json"
    return found


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so one run hashes each file once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


@dataclasses.dataclass
class TablesConfig(FeedConfig):
    """A FeedConfig over a folder of table files; `options` is TablesOptions as a dict."""

    folder: str = ""
    options: dict = dataclasses.field(default_factory=dict)


def content_key(files: dict[str, Path], settings: dict) -> str:
    """sha256 over each file's role, name and bytes, and the settings that shape the records."""
    digest = hashlib.sha256(KEY_VERSION.encode())
    for role in sorted(files):
        digest.update(f"\n{role}:{files[role].name}:{_file_digest(files[role])}".encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def tables_config(folder: str | Path, options: Optional[TablesOptions] = None, numbers: Optional[str] = None,
                  template: Optional[PromptTemplate] = None) -> TablesConfig:
    """The builder config of a folder: named `<folder>_<16 hex digits of the content key>`.
    template=None builds PromptTemplate() here, so gin bindings of PromptTemplate apply."""
    options = options or TablesOptions()
    config = TablesConfig(name="pending", folder=str(Path(folder).resolve()), options=dataclasses.asdict(options),
                          template=template or PromptTemplate(), numbers=numbers or "quantile")
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(FeedConfig)
                if f.name not in ("name", "description")}
    settings["options"] = config.options
    key = content_key(find_table_files(folder), settings)
    slug = re.sub(r"[^a-z0-9]+", "_", Path(config.folder).name.lower()).strip("_") or "tables"
    return dataclasses.replace(config, name=f"{slug}_{key[:16]}", description=f"tables in {config.folder}")


def load_table_folder(folder: str | Path, options: Optional[TablesOptions] = None) -> FeedTables:
    """The folder's three tables through `load_tables` (schema.json when present, else inferred)."""
    files = find_table_files(folder)
    return load_tables(files["users"], files["items"], files["interactions"], schema=files.get("schema"),
                       name=Path(folder).resolve().name, options=options or TablesOptions())


class _TableFiles:
    def _load_tables(self) -> FeedTables:
        config = self.builder_config
        options = TablesOptions(**config.options)
        tables = load_table_folder(config.folder, options)
        if tables_config(config.folder, options, config.numbers, config.template).name != config.name:
            raise LoadError(f"{config.folder}: the files changed while {config.name} was being prepared; "
                            "run again")
        print(tables.summary, flush=True)
        return tables


class Tables(_TableFiles, _FeedBuilder):
    """Member examples from your own users / items / interactions files (train / validation / test)."""

    name = "tables"


class TablesCorpus(_TableFiles, _FeedBuilder):
    """Every item of your own tables with its prompt (split `corpus`)."""

    name = "tables_corpus"


# ff_jax.data.prepared.BUILDERS lists these beside the other datasets.
TABLE_BUILDERS = {cls.name: cls for cls in (Tables, TablesCorpus)}


def open_tables(name: str, config: TablesConfig, data_dir: str | Path, prepare: bool = True,
                engine: Optional[PrepareConfig] = None):
    """(split sources, PromptFormat, metadata) of `tables` or `tables_corpus` for this content key,
    prepared first (printing the load summary) when missing and `prepare` is set."""
    if prepare and not is_prepared(data_dir, name, config.name):
        print(f"Preparing {name}/{config.name} from {config.folder} into {data_dir}", flush=True)
        earlier = earlier_preparations(data_dir, config)
        if earlier:
            print(f"  The files in {config.folder} (or the options that shape the records) changed since "
                  f"{', '.join(earlier)} was prepared from them. A run trained on that content is now embedded "
                  "and evaluated on the new content: its figures describe these files, and it has not seen "
                  "what changed; train again for a model of the new files.", flush=True)
        TABLE_BUILDERS[name](config=config, data_dir=data_dir).download_and_prepare(engine)
    return open_prepared(data_dir, name, config.name)


def earlier_preparations(data_dir: str | Path, config: TablesConfig) -> list[str]:
    """Other complete preparations of the same folder under data_dir (another content key)."""
    slug = config.name.rsplit("_", 1)[0]
    root = Path(data_dir) / Tables.name
    found = [p.parent.name for p in root.glob(f"{slug}_*/{VERSION}") if p.parent.name != config.name
             and p.parent.name.rsplit("_", 1)[0] == slug and is_prepared(data_dir, Tables.name, p.parent.name)]
    return sorted(found)
