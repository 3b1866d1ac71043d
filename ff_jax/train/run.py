"""A training run as an object: `Run.create` for a new or resumed one, `Run.open` for one on disk.

A run is a workdir (its files: ff_jax.train.layout), a kind (a dual encoder or a ranker) and a
`RunSpec`: what the model and its data are. `ff-jax train` and `rank-train` create runs;
`embed`, `eval`, `export`, `sweep`, the demo, the experiments and the benchmarks open them, so
none of them rebuilds a run from gin itself:

    run = Run.open("runs/x")            # config.gin parsed in a scope of its own
    run.spec.data, run.spec.model_config, run.layout.checkpoints

The spec is read from the run's config.gin with gin's global config set aside for the parse and
put back after it, so opening a run neither sees nor changes what the caller has bound. A training
entry point registers itself for its kind (`entry_point`): the spec of a kind is that entry's
parameters as the config binds them, else their defaults.

Nothing is written until `accept`: a run refused by a check (another run's signature in run.json,
a step that does not fit in memory) leaves its workdir as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import gin
import jax

from ff_jax import gin_cli
from ff_jax.data.feed_data import FeedData
from ff_jax.files import write_atomic
from ff_jax.model import LlamaConfig
from ff_jax.train.dual_encoder import EncoderConfig
from ff_jax.train.layout import Layout
from ff_jax.train.optimizer import OptimizerConfig

DUAL_ENCODER = "dual_encoder"
RANKER = "ranker"

# What a checkpoint's shapes depend on, of the model's config.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "head_dim", "tie_embeddings", "scan_layers", "lora_rank", "param_dtype")

_ENTRY_POINTS: dict[str, Callable] = {}  # kind -> the gin-configurable function that trains it


class IncompatibleWorkdir(ValueError):
    """The workdir holds checkpoints of a run with another model, encoder or loss."""


class WrongCheckpointKind(ValueError):
    """A workdir holds another kind of model than the one asked for."""


def entry_point(kind: str):
    """Registers a gin-configurable training function as the one that trains runs of `kind`."""

    def register(fn):
        _ENTRY_POINTS[kind] = fn
        return fn

    return register


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run trains: its data (FeedData; a ranker's RankerData, which holds one), the model
    (a config built from scratch, or a pretrained source with overrides), the dual encoder's head
    and loss, the optimiser and the seed. init_from: a ranker's starting dual-encoder run."""

    kind: str
    data: Any
    model_config: Optional[LlamaConfig] = None
    pretrained: Optional[str] = None
    model_overrides: dict = dataclasses.field(default_factory=dict)
    encoder: EncoderConfig = EncoderConfig()
    loss: Any = None
    seed: int = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh_factory: Optional[Callable] = None
    init_from: Optional[str] = None

    def __post_init__(self):
        object.__setattr__(self, "model_overrides", check_model_overrides(self.model_overrides))
        if self.kind not in (DUAL_ENCODER, RANKER):
            raise ValueError(f"a run's kind is {DUAL_ENCODER!r} or {RANKER!r}, not {self.kind!r}")

    @property
    def feed(self) -> FeedData:
        """The feed dataset: the data itself, or the one a ranker's data reads."""
        return self.data if isinstance(self.data, FeedData) else self.data.feed

    def model_signature(self) -> Optional[dict]:
        if self.pretrained:
            return {"pretrained": str(self.pretrained),
                    **{k: v for k, v in self.model_overrides.items() if self.kind == RANKER or k in SHAPE_FIELDS}}
        if self.model_config is None:
            return None
        cfg = self.model_config.replace(**self.model_overrides) if self.model_overrides else self.model_config
        return {k: getattr(cfg, k) for k in SHAPE_FIELDS}

    def signature(self) -> dict:
        """run.json: what a checkpoint's shapes and meaning depend on; a resume must agree on all of it."""
        if self.kind == RANKER:
            data = self.data
            return {"kind": RANKER, "model": self.model_signature(),
                    "init_from": str(self.init_from) if self.init_from else None,
                    "ranker": dataclasses.asdict(data.ranker), "candidates": data.candidates,
                    "context_budget": data.context_budget, "loss": type(self.loss).__name__,
                    "accumulation_steps": self.optimizer.accumulation_steps,
                    **({"retrieval_prior": data.retrieval_prior} if data.retrieval_prior else {})}
        return {"model": self.model_signature(), "encoder": dataclasses.asdict(self.encoder),
                "loss": type(self.loss).__name__,
                "learned": [bool(getattr(self.loss, "learn_temperature", False)),
                            bool(getattr(self.loss, "learn_bias", False))],
                "accumulation_steps": self.optimizer.accumulation_steps}

    @classmethod
    def from_gin(cls, kind: str) -> RunSpec:
        """The spec the currently parsed gin config gives a run of `kind`: its entry point's
        parameters as bound, else their defaults. A ranker's model, when not bound to its own
        entry, is the one bound to the dual encoder's (the model files of configs/model/ serve both)."""
        args = _bound_arguments(kind)
        if kind == RANKER:
            for name, value in dual_encoder_model().items():
                if args.get(name) is None:
                    args[name] = value
        if args.get("mesh_factory") is not None:  # its bindings (make_mesh.num_devices) taken now, not when called
            args["mesh_factory"] = _with_bindings(args["mesh_factory"])
        fields = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        return cls(kind=kind, **{k: v for k, v in args.items() if k in fields and v is not None})


def _with_bindings(fn: Callable) -> Callable:
    """A gin-configurable function with its current bindings fixed, so it means the same outside the parse."""
    try:
        bound = gin.get_bindings(fn)
    except ValueError:  # not a configurable
        return fn
    return functools.partial(fn, **bound)


def dual_encoder_model() -> dict:
    """model_config, pretrained and model_overrides as the parsed gin config binds them to the dual
    encoder's `train`: a ranker's model where its own entry binds none."""
    args = _bound_arguments(DUAL_ENCODER, require_data=False)
    return {name: args.get(name) for name in ("model_config", "pretrained", "model_overrides")}


def _bound_arguments(kind: str, require_data: bool = True) -> dict:
    if kind not in _ENTRY_POINTS:
        raise ValueError(f"no training entry point is registered for runs of kind {kind!r} (import "
                         f"{'ff_jax.rank' if kind == RANKER else 'ff_jax.train'} first)")
    fn = _ENTRY_POINTS[kind]
    args = {n: p.default for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}
    args.update(gin.get_bindings(fn))
    if require_data and args.get("data", gin.REQUIRED) is gin.REQUIRED:
        raise ValueError("no training data is bound (train.data): pass the training run's gin files, or the "
                         "--workdir of a training run (its config.gin is read)")
    return args


def check_model_overrides(overrides: Optional[dict]) -> dict:
    """`overrides` as a dict, refusing a field LlamaConfig does not have by name (listing those it has)."""
    overrides = dict(overrides or {})
    fields = [f.name for f in dataclasses.fields(LlamaConfig)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"model_overrides: unknown LlamaConfig field(s) {unknown}; the fields are: "
                         f"{', '.join(fields)}")
    return overrides


def run_kind(workdir: str | Path) -> Optional[str]:
    """"ranker" or "dual_encoder" from the workdir's run.json (older runs name no kind: a dual
    encoder); None when there is none."""
    path = Layout(workdir).run_json
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("kind", DUAL_ENCODER)


def check_kind(workdir: str | Path, expected: str, allow_new: bool = False) -> None:
    """Refuses a workdir of the other kind, naming both, before any array is read."""
    kind = run_kind(workdir)
    if kind is None and allow_new:
        return
    if kind is None:
        raise FileNotFoundError(f"{workdir}: no run.json (not a training run's workdir; expected a {expected})")
    if kind != expected:
        raise WrongCheckpointKind(f"{workdir} holds a {kind.replace('_', ' ')} run, not a {expected.replace('_', ' ')}"
                                  + (" (give the ranker's own workdir)" if expected == RANKER else
                                     " (embed, init_from and a retriever take a dual-encoder workdir)"))


class Run:
    """One training run's workdir, kind and spec."""

    def __init__(self, workdir: str | Path, spec: RunSpec):
        self.workdir = Path(workdir)
        self.layout = Layout(self.workdir)
        self.spec = spec

    @property
    def kind(self) -> str:
        return self.spec.kind

    def __repr__(self) -> str:
        return f"Run({str(self.workdir)!r}, {self.kind})"

    @classmethod
    def create(cls, workdir: str | Path, spec: RunSpec) -> Run:
        """A run about to train in `workdir`: refused when the workdir holds a run of another kind
        or signature. Nothing is written until `accept`."""
        run = cls(workdir, spec)
        check_kind(workdir, spec.kind, allow_new=True)
        path = run.layout.run_json
        signature = json.loads(json.dumps(spec.signature(), default=str))  # compare as JSON (tuples → lists)
        if path.exists():
            old = json.loads(path.read_text())
            diffs = [f"{k}: {old.get(k)!r} in the workdir, {v!r} now" for k, v in signature.items()
                     if old.get(k) != v]
            if diffs:
                raise IncompatibleWorkdir(f"{workdir} holds an incompatible run:\n  " + "\n  ".join(diffs)
                                          + "\nUse a new --workdir, or the gin config that run was started with.")
        return run

    def accept(self, config_text: Optional[str]) -> None:
        """Every check passed: run.json (a new run's) and config.gin are written now, each atomically."""
        if jax.process_index() != 0:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.layout.run_json.exists():
            write_atomic(self.layout.run_json, json.dumps(self.spec.signature(), indent=2, default=str))
        if config_text is not None:
            write_atomic(self.layout.config_gin, config_text)

    @classmethod
    def open(cls, workdir: str | Path, gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
             expect: Optional[str] = None) -> Run:
        """The run in `workdir`: its config.gin, then `gin_files` and `bindings` (what a command
        adds, e.g. another DATA_DIR), parsed in a gin scope of their own. A workdir without
        config.gin (an untrained model described by `gin_files` alone) is a dual encoder's.
        expect: refuse a run of another kind."""
        layout = Layout(workdir)
        kind = run_kind(workdir) or DUAL_ENCODER
        if expect is not None:  # a workdir without run.json is a dual encoder's (written before kinds were)
            check_kind(workdir, expect, allow_new=expect == DUAL_ENCODER)
        files = ([str(layout.config_gin)] if layout.config_gin.exists() else []) + list(gin_files)
        if not files:
            raise FileNotFoundError(f"{workdir}: no {layout.config_gin.name} (not a training run's workdir); "
                                    "give the gin files that describe the model")
        # Bindings of later stages (EmbedConfig, evaluate_run, ...) need not be imported to read the spec.
        with gin_cli.isolated(), gin_cli.configured(files, bindings, skip_unknown=True):
            spec = RunSpec.from_gin(kind)
        return cls(workdir, spec)


def train_from_config(workdir: str | Path, kind: str, gin_files: Sequence[str], bindings: Sequence[str] = ()) -> dict:
    """Trains (or resumes) the run of `kind` that the gin files and bindings describe, in `workdir`,
    as `ff-jax train` and `rank-train` do; returns its last logged metrics."""
    if kind not in _ENTRY_POINTS:
        _bound_arguments(kind)  # raises, naming the module to import
    with gin_cli.configured(gin_files, bindings):
        # config.gin is written by the entry once every check has passed: a refused run changes nothing.
        return _ENTRY_POINTS[kind](workdir=str(workdir), config_text=gin.config_str())
