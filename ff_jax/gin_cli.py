"""t5x-style gin flags for every `ff-jax` subcommand: --gin_file=... --gin.NAME=VALUE --workdir=DIR.

Files are searched in the current directory, then in the repository's configs/ (so
`--gin_file=experiments/infonce.gin` and `--gin_file=configs/experiments/infonce.gin` both work).
Bindings follow gin syntax; a value that is not a gin literal or reference is taken as a string
(`--gin.DATA_DIR=/data` == `--gin.DATA_DIR="'/data'"`). Errors name the flag or file at fault.
"""

import ast
import contextlib
import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import gin

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class UsageError(ValueError):
    """A bad command line or gin config; the CLI prints it without a traceback."""


def split_flags(argv: Sequence[str]) -> tuple[list[str], list[str], Optional[str], list[str]]:
    """(gin files, gin bindings, workdir, other args) from `--flag=value` / `--flag value` forms."""
    files, bindings, workdir, rest = [], [], None, []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--gin_file") or arg.startswith("--workdir"):
            name, eq, value = arg.partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise UsageError(f"{name} needs a value")
                i, value = i + 1, args[i + 1]
            if name == "--gin_file":
                files.append(value)
            elif name == "--workdir":
                workdir = value
            else:
                rest.append(arg)
        elif arg.startswith("--gin."):
            name, eq, value = arg[len("--gin."):].partition("=")
            if not eq or not name:
                raise UsageError(f"{arg!r}: expected --gin.NAME=VALUE")
            bindings.append(f"{name} = {_as_gin_value(value)}")
        else:
            rest.append(arg)
        i += 1
    return files, bindings, workdir, rest


def _as_gin_value(value: str) -> str:
    text = value.strip()
    if text[:1] in ("@", "%") or text in ("None", "True", "False"):
        return text
    try:
        ast.literal_eval(text)
        return text
    except (ValueError, SyntaxError):
        return repr(value)  # a bare path or word: a string


def resolve_file(name: str) -> str:
    for candidate in (Path(name), CONFIGS_DIR / name, CONFIGS_DIR.parent / name):
        if candidate.is_file():
            return str(candidate)
    raise UsageError(f"--gin_file={name}: no such file (looked in the current directory and {CONFIGS_DIR})")


def _tolerant_file_readers() -> None:
    """gin also looks `include 'model/x.gin'` up as a resource of a Python package `model`. A
    namespace package of that name (e.g. tests/model under pytest) makes that lookup raise
    TypeError instead of answering "no", and a missing package makes it log "ERROR Path not found"
    on the root logger before gin finds the file on its search path. Treat such a lookup as
    "not there", quietly."""
    readers = getattr(gin.config, "_FILE_READERS", None)
    if not readers:
        return
    for i, (reader, exists) in enumerate(readers):
        if getattr(exists, "_ff_jax_tolerant", False):
            continue

        def tolerant(path, _exists=exists):
            previous = logging.root.manager.disable
            logging.disable(max(previous, logging.ERROR))
            try:
                return _exists(path)
            except TypeError:
                return False
            finally:
                logging.disable(previous)

        tolerant._ff_jax_tolerant = True
        readers[i] = (reader, tolerant)


def parse(files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parses the files then the bindings; raises UsageError on unknown names and unset REQUIRED macros."""
    _tolerant_file_readers()
    gin.clear_config()
    known = getattr(gin.config, "_LOCATION_PREFIXES", [])  # clear_config keeps it: add each path once
    for path in (str(CONFIGS_DIR), str(CONFIGS_DIR.parent)):
        if path not in known:
            gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings([resolve_file(f) for f in files], bindings, finalize_config=False)
    except (ValueError, IOError, SyntaxError) as err:
        message = str(err)
        if "No configurable matching" in message or "doesn't have a parameter" in message:
            raise UsageError(f"unknown gin name: {message}") from None
        raise UsageError(f"gin config error: {message}") from None
    missing = required_macros_unset()
    if missing:
        flags = " ".join(f"--gin.{name}=..." for name in missing)
        raise UsageError(f"missing required gin macro(s): {', '.join(missing)}. Set them with {flags} "
                         "(the run file's header comment lists what each one means)")


@contextlib.contextmanager
def configured(files: Sequence[str], bindings: Sequence[str]):
    """Parses like `parse` for the body of a `with`, then clears gin, so a command run in a notebook
    or test leaves no bindings behind to change the defaults of the next thing constructed there.
    gin's errors from the body about what the config bound become UsageErrors."""
    try:
        parse(files, bindings)
        yield
    except RuntimeError as err:
        if "Required bindings" in str(err):  # a gin.REQUIRED parameter nobody bound
            raise UsageError(f"missing gin binding: {err}") from None
        raise
    except ValueError as err:
        if "In call to configurable" in str(err):  # a config class refused its values
            raise UsageError(f"bad gin value: {err}") from None
        raise
    finally:
        gin.clear_config()


@contextlib.contextmanager
def workdir_command(name: str, argv: Sequence[str], workdir_help: str):
    """`ff-jax NAME [--gin_file=F ...] [--gin.X=Y ...] --workdir=DIR` for commands that work on a
    training run's workdir: its config.gin is read first when present, then the files and flags;
    the body of the `with` runs configured (see `configured`) and gets the workdir."""
    files, bindings, workdir, rest = split_flags(argv)
    if rest:
        raise UsageError(f"{name}: unknown arguments {rest}")
    if not workdir:
        raise UsageError(f"{name}: --workdir=DIR is required ({workdir_help})")
    run_config = Path(workdir) / "config.gin"
    with configured(([str(run_config)] if run_config.exists() else []) + list(files), bindings):
        yield workdir


def required_macros_unset() -> list[str]:
    """Macros still bound to %gin.REQUIRED after all files and bindings."""
    config = getattr(gin.config, "_CONFIG", {})
    return sorted(name for (name, selector), values in config.items()
                  if selector == "gin.macro" and repr(values.get("value")) == "%gin.REQUIRED")


def required_macros_in(path: str) -> list[str]:
    """`NAME = %gin.REQUIRED` lines of one file (for documentation and checks)."""
    text = Path(resolve_file(path)).read_text()
    return re.findall(r"^\s*([A-Za-z_]\w*)\s*=\s*%gin\.REQUIRED", text, flags=re.M)
