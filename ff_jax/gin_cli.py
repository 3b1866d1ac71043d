"""t5x-style gin flags for every `ff-jax` subcommand: --gin_file=FILE ... --gin.NAME=VALUE ...

Files are searched in the current directory, then in the repository's configs/ (so
`--gin_file=experiments/infonce.gin` and `--gin_file=configs/experiments/infonce.gin` both work).
The files are parsed first, then each `--gin.NAME=VALUE` on its own, by gin itself, so an error
names the flag that caused it.

The one rule for values: gin syntax, with bare words and paths taken as strings where a string
fits. A value gin cannot parse (`/data`, `bfloat16`) is read as that string
(`--gin.DATA_DIR=/data` == `--gin.DATA_DIR="'/data'"`). A flag whose value ends up a string
where the config held an int, float or bool (its value in the files, else the parameter's
default) is an error naming the flag: `--gin.STEPS=twenty` is refused, not trained on. A macro
flag must name a macro some file defines, so a typo is refused rather than ignored.

Errors are `GinError`s (a ValueError) whose `label` says what failed: "unknown gin name",
"bad gin value", "missing required gin macro", "missing gin binding", "gin file error". Only the CLI turns
them into one line and exit status 2.
"""

import contextlib
import inspect
import logging
import re
from pathlib import Path
from typing import Sequence

import gin

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
_UNSET = object()  # a name nothing binds (no such macro, or a parameter without a default)


class GinError(ValueError):
    """A gin file, flag or bound value the run cannot use; `label` names the kind of failure."""

    def __init__(self, label: str, message: str):
        super().__init__(message)
        self.label = label


def rewrite_gin_flags(argv: Sequence[str]) -> list[str]:
    """`--gin.NAME=VALUE` → `--gin_bindings=NAME=VALUE`, so absl parses every flag (as t5x does)."""
    return [f"--gin_bindings={arg[len('--gin.'):]}" if arg.startswith("--gin.") else arg for arg in argv]


def resolve_file(name: str) -> str:
    for candidate in (Path(name), CONFIGS_DIR / name, CONFIGS_DIR.parent / name):
        if candidate.is_file():
            return str(candidate)
    raise GinError("gin file error",
                   f"--gin_file={name}: no such file (looked in the current directory and {CONFIGS_DIR})")


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


def without_gin_trail(err: BaseException) -> str:
    """An error's message without the "In call to configurable ..." lines gin appends."""
    return str(err).split("\n  In call to configurable")[0]


def _first_lines(err: Exception) -> str:
    """gin's message without its trail, on one line."""
    return re.sub(r"\s*\n\s*", " ", without_gin_trail(err)).strip()


def _parse_error(err: Exception, where: str) -> GinError:
    message = _first_lines(err)
    if where:  # the flag is named already: drop gin's "In bindings string line 1 <the binding>"
        message = message.split(" In bindings string")[0]
    if "No configurable matching" in message or "doesn't have a parameter" in message:
        return GinError("unknown gin name", f"{where}{message}")
    return GinError("gin file error" if not where else "bad gin value", f"{where}{message}")


def _current_value(name: str):
    """What `name` ("MACRO" or "[scope/]Configurable.param") holds now: its binding, macros
    followed, else the parameter's default; _UNSET when nothing gives it a value."""
    key = name if "." in name else f"%{name}"
    try:
        value = gin.query_parameter(key)
    except ValueError:
        if "." not in name:
            return _UNSET
        configurable, _, param = name.split("/")[-1].rpartition(".")
        try:
            match = gin.config._REGISTRY.get_match(configurable)  # gin has no public lookup of defaults
        except ValueError:  # an ambiguous name: gin's own parse reports it
            return _UNSET
        parameter = inspect.signature(match.wrapped).parameters.get(param) if match else None
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return _UNSET
        return parameter.default
    while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = gin.query_parameter("%" + value.scoped_selector.rpartition("/")[0])  # train.num_steps = %STEPS
    return value


def bind(binding: str, skip_unknown: bool = False) -> None:
    """Parses one `NAME=VALUE` (a --gin.NAME=VALUE flag) on top of the files; see the module's rule."""
    name, eq, value = (part.strip() for part in binding.partition("="))
    flag = f"--gin.{name}={value}"
    if not eq or not name:
        raise GinError("bad gin value", f"--gin.{binding}: expected --gin.NAME=VALUE")
    before = _current_value(name)
    if "." not in name and before is _UNSET:
        raise GinError("unknown gin name", f"{flag}: no gin file defines the macro {name}")
    try:
        gin.parse_config(f"{name} = {value}", skip_unknown=skip_unknown)
    except SyntaxError:
        try:  # a bare word or path: a string
            gin.parse_config(f"{name} = {value!r}", skip_unknown=skip_unknown)
        except (ValueError, SyntaxError) as err:
            raise _parse_error(err, f"{flag}: ") from None
    except ValueError as err:
        raise _parse_error(err, f"{flag}: ") from None
    after = _current_value(name)
    if isinstance(after, str) and isinstance(before, (bool, int, float)):
        kind = type(before).__name__
        raise GinError("bad gin value", f"{flag}: {name} takes {'an' if kind == 'int' else 'a'} {kind} "
                                        f"(the config holds {before!r}), not the string {after!r}")


def parse(files: Sequence[str], bindings: Sequence[str] = (), skip_unknown: bool = False) -> None:
    """Parses the files, then each binding (`NAME=VALUE`); raises GinError on unknown names, values
    that do not fit and REQUIRED macros left unset. skip_unknown: bindings of configurables not
    imported are ignored (a run's config.gin read for its spec also binds later stages')."""
    _tolerant_file_readers()
    gin.clear_config()
    known = getattr(gin.config, "_LOCATION_PREFIXES", [])  # clear_config keeps it: add each path once
    for path in (str(CONFIGS_DIR), str(CONFIGS_DIR.parent)):
        if path not in known:
            gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings([resolve_file(f) for f in files], None, finalize_config=False,
                                            skip_unknown=skip_unknown)
    except (ValueError, IOError, SyntaxError) as err:
        if isinstance(err, GinError):
            raise
        raise _parse_error(err, "") from None
    for binding in bindings:
        bind(binding, skip_unknown)
    missing = required_macros_unset()
    if missing:
        flags = " ".join(f"--gin.{name}=..." for name in missing)
        raise GinError("missing required gin macro", f"{', '.join(missing)}: set with {flags} (the run "
                                                     "file's header comment says what each one means)")


def _innermost_configurable(err: Exception) -> tuple[str, str]:
    """(name, "class" or "function") of what gin was calling when `err` was raised; ("", "") when
    it was raised outside any configurable."""
    found = re.search(r"In call to configurable '([^']*)' \(<(class|function)", str(err))
    return (found.group(1), found.group(2)) if found else ("", "")


@contextlib.contextmanager
def isolated():
    """gin's global config set aside for the body and put back after it: what the body parses
    (a run's own config.gin, ff_jax.train.run.Run.open) neither sees nor changes the caller's."""
    config = gin.config
    saved = (dict(config._CONFIG), dict(config._SINGLETONS), set(config._IMPORTS),  # gin has no public save
             dict(config._OPERATIVE_CONFIG), config._CONFIG_IS_LOCKED)
    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()
        config._CONFIG.update(saved[0])
        config._SINGLETONS.update(saved[1])
        config._IMPORTS.update(saved[2])
        config._OPERATIVE_CONFIG.clear()
        config._OPERATIVE_CONFIG.update(saved[3])
        config._set_config_is_locked(saved[4])


@contextlib.contextmanager
def configured(files: Sequence[str], bindings: Sequence[str] = (), skip_unknown: bool = False):
    """Parses like `parse` for the body of a `with`, then clears gin, so a command run in a notebook
    or test leaves no bindings behind to change the defaults of the next thing constructed there.
    A config class that gin constructs and that refuses its values (a ValueError from its
    __init__ / __post_init__) is a "bad gin value"; every other error passes through unchanged."""
    try:
        parse(files, bindings, skip_unknown)
        yield
    except RuntimeError as err:
        if "Required bindings" in str(err):  # a gin.REQUIRED parameter nobody bound
            raise GinError("missing gin binding", _first_lines(err)) from None
        raise
    except ValueError as err:
        name, kind = _innermost_configurable(err)
        if isinstance(err, GinError) or kind != "class":
            raise
        flags = [f"--gin.{b.strip()}" for b in bindings
                 if b.split("=")[0].strip().split("/")[-1].startswith(f"{name}.")]
        raise GinError("bad gin value", _first_lines(err) + (f" (from {' '.join(flags)})" if flags else "")) from None
    finally:
        gin.clear_config()


def required_macros_unset() -> list[str]:
    """Macros still bound to %gin.REQUIRED after all files and bindings."""
    config = getattr(gin.config, "_CONFIG", {})
    return sorted(name for (name, selector), values in config.items()
                  if selector == "gin.macro" and repr(values.get("value")) == "%gin.REQUIRED")


def required_macros_in(path: str) -> list[str]:
    """Macros a file leaves %gin.REQUIRED, its includes' included (for --help and checks): read from
    the text, without importing the configurables it binds."""
    required: list[str] = []
    for line in Path(resolve_file(path)).read_text().splitlines():
        include = re.match(r"\s*include\s+['\"]([^'\"]+)['\"]", line)
        binding = re.match(r"\s*([A-Za-z_]\w*)\s*=\s*(\S.*)", line)
        if include:
            required += [name for name in required_macros_in(include.group(1)) if name not in required]
        elif binding and binding.group(2).startswith("%gin.REQUIRED"):
            required += [] if binding.group(1) in required else [binding.group(1)]
        elif binding and binding.group(1) in required:  # a later value satisfies it
            required.remove(binding.group(1))
    return required


def header_comment(path: str) -> str:
    """The leading `#` comment block of a gin file (run files list their macros there)."""
    lines = []
    for line in Path(resolve_file(path)).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:].rstrip() if line.startswith("# ") else line[1:].rstrip())
    return "\n".join(lines)
