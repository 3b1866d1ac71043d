"""`ff-jax SUBCOMMAND --gin_file=FILE --gin.NAME=VALUE --workdir=DIR`: the one entry point.

    ff-jax train --gin_file=experiments/tiny_smoke.gin --gin.DATA_DIR=/tmp/tfds --workdir=/tmp/run
    ff-jax embed --workdir=/tmp/run        # the training run's config.gin is read first
    ff-jax eval  --workdir=/tmp/run
    ff-jax demo  [--steps=100] [--workdir=workdirs/demo]
    ff-jax SUBCOMMAND --help               # its flags and the gin macros its run file requires

One absl flag parser for every subcommand: `--gin.NAME=VALUE` is rewritten to
`--gin_bindings=NAME=VALUE` (as t5x does) and ff_jax.gin_cli parses the bindings with gin
itself. A subcommand is a thin function: training commands hand their gin files to
ff_jax.train.run.train_from_config; the others open the run in --workdir (ff_jax.train.run.Run.open,
its config.gin parsed in a scope of its own) and pass it to their entry (retrieval.embed_job.embed,
retrieval.evaluate.evaluate_run, rank.evaluate.rerank_run, serving.export.export_bundle).

Library code raises ordinary exceptions. Here, and only here, an error in what the user gave
(flags, gin, files, data: flag errors, GinError, ValueError, OSError) becomes one line on stderr,
`ff-jax NAME: <what failed>: <message>`, and exit status 2; any other exception is a bug and keeps
its traceback, as does every error under `--verbosity=1`.
"""

import dataclasses
import re
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence

from absl import flags

from ff_jax import gin_cli, verbosity


class CommandLineError(ValueError):
    """A flag the command cannot run with (missing or contradictory)."""

    label = "bad flag"


class NoSuchWorkdir(CommandLineError):
    label = "no such workdir"


def _existing_run(args, what: str) -> None:
    """Refuses a --workdir that does not exist when nothing else (--gin_file) describes the run: it
    would otherwise be reported as a missing gin binding."""
    if not Path(args.workdir).exists() and not args.gin_file:
        raise NoSuchWorkdir(f"--workdir={args.workdir} ({what})")


def _files_with_workdir_config(args) -> list[str]:
    """The workdir's config.gin (a training run's, when there is one), then --gin_file."""
    from ff_jax.train.layout import Layout

    run_config = Layout(args.workdir).config_gin
    return ([str(run_config)] if run_config.exists() else []) + list(args.gin_file or [])


def _open_run(args, expect: Optional[str] = None):
    """The run in --workdir, with --gin_file and --gin.NAME=VALUE on top of its config.gin."""
    from ff_jax.train.run import Run

    return Run.open(args.workdir, args.gin_file or [], args.gin_bindings, expect=expect)


# Each subcommand imports its modules when it runs: they import jax (seconds), which `ff-jax --help`
# and `ff-jax SUBCOMMAND --help` should not wait for.

def _train(args) -> None:
    if not args.gin_file:
        raise CommandLineError("give at least one --gin_file (e.g. --gin_file=experiments/tiny_smoke.gin)")
    from ff_jax.train import host_memory

    host_memory.prefer_memory_schedule()  # before JAX's backend starts
    if args.distributed:  # one process per host: coordinator and ids from the environment
        import jax

        jax.distributed.initialize()
    from ff_jax.train import loop  # noqa: F401  (registers the entry point and the configurables the files bind)
    from ff_jax.train.run import DUAL_ENCODER, train_from_config

    result = train_from_config(args.workdir, DUAL_ENCODER, args.gin_file, args.gin_bindings)
    for split, values in result.items():
        if values:
            print(f"{split}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float)))


def _prepare(args) -> None:
    """Prepares the dataset a training run would read, and nothing else (for a cluster: with
    --gin.PrepareConfig.engine=ray and ray_address; docs/data_pipeline.md)."""
    if not args.gin_file:
        raise CommandLineError("give the run file whose data to prepare (e.g. --gin_file=experiments/movielens_cpu.gin)")
    from ff_jax.train import loop  # noqa: F401  (registers the configurables the files bind)
    from ff_jax.data.feed_data import FeedData

    with gin_cli.configured(args.gin_file, args.gin_bindings):
        data = FeedData()
        sources, _, metadata = data.open_dataset(data.dataset)
    counts = ", ".join(f"{len(source):,} {split}" for split, source in sources.items())
    print(f"prepared {data.dataset}/{data.config_name} in {data.data_dir}: {counts} records, "
          f"{metadata['corpus_size']:,} items")


def _embed(args) -> None:
    _existing_run(args, "give a training run's workdir, or --gin_file=... for a run to embed with")
    from ff_jax.retrieval import embed_job
    from ff_jax.train.run import DUAL_ENCODER

    run = _open_run(args, expect=DUAL_ENCODER)  # a ranker has no towers to embed with
    with gin_cli.configured(_files_with_workdir_config(args), args.gin_bindings):  # EmbedConfig's bindings
        folders = embed_job.embed(run)
    for tower, folder in folders.items():
        print(f"{tower} embeddings: {folder}")


def _eval(args) -> None:
    _existing_run(args, "give the workdir `ff-jax embed` wrote to")
    from ff_jax.retrieval import evaluate  # prints its own table

    run = _open_run(args)
    with gin_cli.configured(_files_with_workdir_config(args), args.gin_bindings):  # evaluate_run's bindings
        evaluate.evaluate_run(run)


def _rank_train(args) -> None:
    if not args.gin_file:
        raise CommandLineError("give at least one --gin_file (e.g. --gin_file=ranker/tiny_smoke.gin)")
    from ff_jax.rank import evaluate  # noqa: F401  (registers the configurables the files bind)
    from ff_jax.rank import train  # noqa: F401  (registers the entry point)
    from ff_jax.train.run import RANKER, train_from_config

    result = train_from_config(args.workdir, RANKER, args.gin_file, args.gin_bindings)
    print("train: " + ", ".join(f"{k} {v:.4g}" for k, v in result["train"].items() if isinstance(v, float)))


def _eval_or_rerank(args) -> None:
    """A ranker run's workdir reranks its retriever's top-K; any other is the dual encoder's eval."""
    from ff_jax.train.run import RANKER, run_kind

    if run_kind(args.workdir) != RANKER:
        return _eval(args)
    from ff_jax.rank import evaluate as rerank

    run = _open_run(args, expect=RANKER)
    with gin_cli.configured(_files_with_workdir_config(args), args.gin_bindings):  # rerank_run's bindings
        rerank.rerank_run(run)


def _export(args) -> None:
    if not args.out:
        raise CommandLineError("--out=DIR is required (where the bundle goes; it must not exist yet)")
    _existing_run(args, "give a training run's workdir")
    from ff_jax.serving import export
    from ff_jax.serving.ranker import export_ranker
    from ff_jax.train.run import DUAL_ENCODER, RANKER, Run

    ranker = None
    if args.ranker:  # the ranker run, opened under its own config.gin
        ranker = export_ranker(Run.open(args.ranker, expect=RANKER), export.PLATFORMS, args.ranker_retrieval_weight)
        print(f"ranker: served order = ranker score + {ranker.document['retrieval_weight']:g} x retrieval score")
    run = _open_run(args, expect=DUAL_ENCODER)
    with gin_cli.configured(_files_with_workdir_config(args), args.gin_bindings):  # the index's bindings
        print(f"bundle: {export.export_bundle(run, args.out, ranker=ranker)}")


def _serve(args) -> None:
    if not args.bundle:
        raise CommandLineError("--bundle=DIR is required (a folder written by `ff-jax export`)")
    from ff_jax.serving import server

    with gin_cli.configured(args.gin_file or [], args.gin_bindings):
        config = server.ServerConfig()  # limits and batching; the server then runs without gin
    # Beside the bundle (never inside it: an unlisted file there is refused), not under the current directory.
    state_dir = args.workdir or str(Path(args.bundle).absolute().with_name(Path(args.bundle).name + ".state"))
    if args.replicas:
        from ff_jax.serving import ray_serve

        ray_serve.run(args.bundle, state_dir, args.host, args.port, config, args.replicas)
    else:
        server.serve(args.bundle, state_dir, args.host, args.port, config)


def _demo(args) -> None:
    from ff_jax import demo

    demo.run(Path(args.workdir), args.steps, args.gin_bindings)


def _sweep(args) -> None:
    from ff_jax import sweep

    sweep.main(args)


def _sweep_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("sweep", None, "a sweep file: a path, or a name in configs/sweeps/", flag_values=fv)
    flags.DEFINE_boolean("dry_run", False, "print each run's commands, one per line, instead of running them",
                         flag_values=fv)
    flags.DEFINE_boolean("multihost", False, "with --dry_run: train commands for one process per host "
                         "(ff-jax train --distributed)", flag_values=fv)
    flags.DEFINE_boolean("prepare_only", False, "only prepare the datasets the sweep's runs read", flag_values=fv)
    flags.DEFINE_list("seeds", None, "only these of the sweep file's seeds (default: all)", flag_values=fv)
    flags.DEFINE_list("variants", None, "only these of the sweep file's variants (default: all)", flag_values=fv)
    flags.DEFINE_string("data_dir", "workdirs/tfds", "where datasets are prepared (the runs' DATA_DIR)",
                        flag_values=fv)
    flags.DEFINE_string("results_dir", "experiments/results", "summary.csv, summary.md, plots and per-run "
                        "results go to RESULTS_DIR/<sweep>/", flag_values=fv)
    flags.DEFINE_boolean("ray", False, "run each run as a Ray task on a local Ray instance (pip install "
                         "'ff_jax[ray]'); skipping, resume and the summary are as without it", flag_values=fv)
    flags.DEFINE_string("ray_address", None, "run each run as a Ray task on the Ray cluster at this address "
                        "(HOST:6379, or auto); implies --ray. Every node must see the working directory, "
                        "--workdir and --data_dir at the same paths", flag_values=fv)
    flags.DEFINE_float("ray_cpus", None, "CPUs each run's Ray task asks for (default: the sweep file's "
                       "resources.cpus, else 1)", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("ray_gpus", None, "GPUs each run's Ray task asks for (default: the sweep file's "
                       "resources.gpus, else 0)", lower_bound=0, flag_values=fv)


def _distributed_flag(fv: flags.FlagValues) -> None:
    flags.DEFINE_boolean("distributed", False, "one process per host: jax.distributed.initialize() with the "
                         "coordinator and process ids from the environment", flag_values=fv)


def _steps_flag(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("steps", 100, "dual-encoder training steps (the STEPS macro)", lower_bound=1, flag_values=fv)


def _export_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "the bundle folder to write (must not exist)", flag_values=fv)
    flags.DEFINE_string("ranker", None, "a ranker training run (ff-jax rank-train) whose prefill and score steps "
                        "join the bundle", flag_values=fv)
    flags.DEFINE_float("ranker_retrieval_weight", None, "with --ranker: the served order is ranker score + this x "
                       "retrieval score (default: the weight the ranker run's last `ff-jax eval` used, else its "
                       "RankerData.retrieval_prior)",
                       flag_values=fv)


def _serve_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("bundle", None, "a bundle folder written by `ff-jax export`", flag_values=fv)
    flags.DEFINE_string("host", "127.0.0.1", "address to listen on", flag_values=fv)
    flags.DEFINE_integer("port", 8000, "port to listen on", lower_bound=0, upper_bound=65535, flag_values=fv)
    flags.DEFINE_integer("replicas", 0, "0: one uvicorn process; N: a Ray Serve deployment of N replicas "
                         "(pip install 'ff_jax[ray]')", lower_bound=0, flag_values=fv)


@dataclasses.dataclass(frozen=True)
class Command:
    run: Callable
    summary: str
    run_file: str  # the gin file whose macros --help lists
    workdir_help: str
    workdir_default: Optional[str] = None  # None: --workdir is required, unless workdir_optional
    workdir_optional: bool = False  # no --workdir: the command picks one itself
    gin_files: bool = True  # takes --gin_file
    extra_flags: Callable[[flags.FlagValues], None] = lambda fv: None
    macros_note: str = ""


COMMANDS = {
    "train": Command(_train, "Trains a dual encoder into --workdir; the same command again resumes from its newest "
                     "checkpoint.", "runs/train.gin", "where checkpoints, metrics and config.gin go",
                     extra_flags=_distributed_flag),
    "prepare": Command(_prepare, "Prepares the dataset a run file reads (ids and text stores under DATA_DIR) without "
                       "training; --gin.PrepareConfig.engine=ray renders its text on Ray Data.", "runs/train.gin",
                       "unused (the dataset goes to DATA_DIR)", workdir_optional=True),
    "embed": Command(_embed, "Embeds the corpus and the members of a split with a training run's newest checkpoint "
                     "(resumable shards under --workdir/embeddings).", "runs/train.gin",
                     "a training run's workdir (its config.gin is read first), or where to write",
                     macros_note="already set when --workdir holds a training run's config.gin"),
    "eval": Command(_eval_or_rerank, "Ranks the corpus for the embedded members: recall@K, NDCG, MRR, cohorts, "
                    "Matryoshka widths, ScaNN against exact. With a ranker run's --workdir: reranks its retriever's "
                    "top-K and reports both.", "runs/train.gin",
                    "where `ff-jax embed` wrote its embeddings, or a ranker run (its config.gin is read first)",
                    macros_note="already set when --workdir holds a training run's config.gin"),
    "rank-train": Command(_rank_train, "Trains a cross-encoder ranker into --workdir; the same command again resumes "
                          "from its newest checkpoint.", "ranker/train.gin",
                          "where checkpoints, metrics and config.gin go"),
    "export": Command(_export, "Exports a training run's towers, weights, prompts, catalogue and index as a verified "
                      "serving bundle (--out).", "runs/train.gin", "a training run's workdir (its config.gin is read "
                      "first)", extra_flags=_export_flags,
                      macros_note="already set when --workdir holds a training run's config.gin"),
    "sweep": Command(_sweep, "Runs a sweep (configs/sweeps/*.toml): each variant x seed trained, embedded and "
                     "evaluated by ff-jax commands in its own workdir, finished runs skipped, then summary.csv, "
                     "summary.md and plots.", "runs/train.gin", "the runs' workdirs go to WORKDIR/<sweep>/<run>",
                     workdir_default="workdirs/sweeps", extra_flags=_sweep_flags,
                     macros_note="DATA_DIR is --data_dir; --gin_file and --gin.NAME=VALUE go to every run's training"),
    "serve": Command(_serve, "Serves a bundle over HTTP: /v1/recommend, /v1/items, /healthz, /readyz, /metrics.",
                     "runs/serve.gin", "where the fresh-items log lives (replayed at start-up; default: "
                     "BUNDLE.state, beside the bundle)", workdir_optional=True, extra_flags=_serve_flags,
                     macros_note="ServerConfig bindings, from --gin_file or --gin.ServerConfig.NAME=VALUE"),
    "demo": Command(_demo, "The whole job end to end on a CPU: a pretrained backbone, feed data, a tiny dual encoder "
                    "trained, then embedded and evaluated against baselines.", "experiments/compact_feed_world.gin",
                    "where data, checkpoints and logs go (emptied first)", workdir_default="workdirs/demo",
                    gin_files=False, extra_flags=_steps_flag, macros_note="the demo sets them itself"),
}


def flag_values(command: Command) -> flags.FlagValues:
    """The flags of one subcommand, in a FlagValues of its own (absl's global FLAGS stays untouched)."""
    fv = flags.FlagValues()
    if command.gin_files:
        flags.DEFINE_multi_string("gin_file", None, "a gin file (a path, or relative to configs/); repeat for "
                                  "more, later files override earlier ones", flag_values=fv)
    flags.DEFINE_multi_string("gin_bindings", [], "a gin binding NAME=VALUE; --gin.NAME=VALUE is the short form",
                              flag_values=fv)
    flags.DEFINE_string("workdir", command.workdir_default, command.workdir_help, flag_values=fv)
    flags.DEFINE_integer("verbosity", -1, "absl levels: -1 warnings (default), 0 also INFO logs and other "
                         "libraries' progress bars, 1 debug logs and tracebacks", short_name="v", flag_values=fv)
    command.extra_flags(fv)
    return fv


def usage() -> str:
    lines = ["usage: ff-jax SUBCOMMAND [--gin_file=FILE ...] [--gin.NAME=VALUE ...] --workdir=DIR [flags]", "",
             "subcommands (ff-jax SUBCOMMAND --help for their flags and gin macros):"]
    width = max(map(len, COMMANDS)) + 1  # the names' column
    lines += [textwrap.fill(command.summary, 100, initial_indent=f"  {name:{width}}",
                            subsequent_indent=" " * (width + 2)) for name, command in COMMANDS.items()]
    return "\n".join(lines)


def help_text(name: str) -> str:
    command = COMMANDS[name]
    fv = flag_values(command)
    flag_help = [line for line in fv.get_help(prefix="", include_special_flags=False).splitlines()
                 if line.startswith("  ")]  # absl heads each module's flags with its name: drop that
    required = gin_cli.required_macros_in(command.run_file)
    note = f" ({command.macros_note})" if command.macros_note else ""
    header = gin_cli.header_comment(command.run_file).splitlines()
    gin_files = "--gin_file=FILE [--gin_file=FILE ...] " if command.gin_files else ""
    workdir = "[--workdir=DIR]" if command.workdir_default or command.workdir_optional else "--workdir=DIR"
    return "\n".join([f"usage: ff-jax {name} {gin_files}[--gin.NAME=VALUE ...] {workdir} [flags]", "",
                      textwrap.fill(command.summary, 100), "", "flags:", *flag_help, "",
                      f"gin macros of {command.run_file} (set with --gin.NAME=VALUE); required: "
                      f"{', '.join(required) or 'none'}{note}", *(f"  {line}" for line in header)])


def one_line(err: BaseException) -> str:
    """The message without gin's "In call to configurable" trail, its lines joined."""
    lines = [line.strip() for line in gin_cli.without_gin_trail(err).splitlines() if line.strip()]
    out = lines[0] if lines else type(err).__name__
    for line in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + line
    return out


def label(err: BaseException) -> Optional[str]:
    """What failed, for the one-line message; None for a bug (which keeps its traceback)."""
    if isinstance(err, (gin_cli.GinError, CommandLineError)):
        return err.label
    if isinstance(err, (ValueError, OSError)) and isinstance(getattr(err, "label", None), str):
        return err.label  # a library error naming what failed, e.g. "corrupt checkpoint"
    if isinstance(err, flags.UnrecognizedFlagError):
        return "unknown flag"
    if isinstance(err, flags.Error):
        return "bad flag"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, (ValueError, OSError)):
        # A named library error says what failed: IncompatibleWorkdir -> "incompatible workdir".
        name = type(err).__name__
        return "error" if name in ("ValueError", "OSError") else " ".join(re.findall(r"[A-Z][a-z]*", name)).lower()
    return None


def parse_flags(fv: flags.FlagValues, name: str, argv: Sequence[str]) -> flags.FlagValues:
    """Parses `argv` of subcommand `name` into `fv`, `--gin.NAME=VALUE` included."""
    extra = fv([f"ff-jax {name}", *gin_cli.rewrite_gin_flags(argv)])[1:]
    if extra:
        raise CommandLineError(f"unexpected argument(s) {extra}: flags take the form --name=value")
    if not fv.workdir and not COMMANDS[name].workdir_optional:
        raise CommandLineError(f"--workdir=DIR is required ({COMMANDS[name].workdir_help})")
    if fv.workdir and Path(fv.workdir).exists() and not Path(fv.workdir).is_dir():  # before any data is prepared
        raise CommandLineError(f"--workdir={fv.workdir} is a file, not a folder")
    return fv


def run(name: str, argv: Sequence[str]) -> int:
    command = COMMANDS[name]
    fv = flag_values(command)
    if any(arg in ("-h", "--help", "--helpfull") for arg in argv):
        print(help_text(name))
        return 0
    try:
        parse_flags(fv, name, argv)
        verbosity.apply(fv.verbosity)
        command.run(fv)
    except Exception as err:  # noqa: BLE001  (sorted into the user's errors and bugs by `label`)
        what = label(err)
        if what is None or fv["verbosity"].value >= 1:
            raise
        print(f"ff-jax {name}: {what}: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"ff-jax: unknown subcommand {argv[0]!r}; choose from {', '.join(COMMANDS)} (ff-jax --help)",
              file=sys.stderr)
        return 2
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
