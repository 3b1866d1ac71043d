"""`ff-jax SUBCOMMAND --gin_file=... --gin.NAME=VALUE --workdir=DIR`: the one entry point.

Each subcommand is a thin gin-configured function `run(workdir)`; adding one is one line in
SUBCOMMANDS ("module:function" of a `main(argv)` or, for gin entries, of the configurable).
"""

import importlib
import sys
from pathlib import Path
from typing import Optional, Sequence

from ff_jax.gin_cli import UsageError, configured, split_flags

# name -> (module:function, takes gin flags). Gin entries are called as fn(workdir=...) after the
# config is parsed; plain entries get the raw argv.
SUBCOMMANDS = {
    "train": ("ff_jax.train.loop:train", True),
    "embed": ("ff_jax.retrieval.embed_job:embed_main", False),
    "eval": ("ff_jax.retrieval.evaluate:eval_main", False),
    "demo": ("ff_jax.demo:main", False),
}

USAGE = ("usage: ff-jax {%s} --gin_file=FILE [--gin_file=...] [--gin.NAME=VALUE ...] --workdir=DIR "
         "[--distributed]" % ",".join(SUBCOMMANDS))


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_gin_command(name: str, target: str, argv: Sequence[str]):
    files, bindings, workdir, rest = split_flags(argv)
    if "--distributed" in rest:  # one process per host: coordinator and ids from the environment
        rest.remove("--distributed")
        import jax

        jax.distributed.initialize()
    if rest:
        raise UsageError(f"{name}: unknown arguments {rest}\n{USAGE}")
    if not files:
        raise UsageError(f"{name}: give at least one --gin_file\n{USAGE}")
    if not workdir:
        raise UsageError(f"{name}: --workdir=DIR is required")
    fn = _load(target)  # importing registers the configurables the files bind
    import gin

    with configured(files, bindings):
        workdir_path = Path(workdir)
        workdir_path.mkdir(parents=True, exist_ok=True)
        (workdir_path / "config.gin").write_text(gin.config_str())
        return fn(workdir=workdir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ff-jax: unknown subcommand {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    target, uses_gin = SUBCOMMANDS[name]
    try:
        if uses_gin:
            run_gin_command(name, target, rest)
        else:
            return int(_load(target)(rest) or 0)
    except UsageError as err:
        print(f"ff-jax {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
