"""Where a run's files live under its workdir: the one place that names them.

    workdir/
      run.json              the run's kind and signature (what its checkpoints' shapes depend on)
      config.gin            the gin config it was trained with (`Run.open` reads it back)
      operative_config.gin  what gin actually used, written after the first step
      metrics.jsonl         one line per logged step; tensorboard/ beside it
      memory.json           what XLA planned for a step, and the peak RSS
      checkpoints/          orbax steps, each sealed by its manifest
      embeddings/items/     `ff-jax embed`'s shards; members_<split>/ beside it
"""

import dataclasses
from pathlib import Path

RUN_JSON = "run.json"
CONFIG_GIN = "config.gin"
OPERATIVE_CONFIG_GIN = "operative_config.gin"
METRICS_JSONL = "metrics.jsonl"
TENSORBOARD = "tensorboard"
MEMORY_JSON = "memory.json"
CHECKPOINTS = "checkpoints"
EMBEDDINGS = "embeddings"
ITEMS = "items"


def members_folder(split: str) -> str:
    return f"members_{split}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of one workdir."""

    workdir: Path

    def __post_init__(self):
        object.__setattr__(self, "workdir", Path(self.workdir))

    @property
    def run_json(self) -> Path:
        return self.workdir / RUN_JSON

    @property
    def config_gin(self) -> Path:
        return self.workdir / CONFIG_GIN

    @property
    def operative_config_gin(self) -> Path:
        return self.workdir / OPERATIVE_CONFIG_GIN

    @property
    def metrics(self) -> Path:
        return self.workdir / METRICS_JSONL

    @property
    def tensorboard(self) -> Path:
        return self.workdir / TENSORBOARD

    @property
    def memory_report(self) -> Path:
        return self.workdir / MEMORY_JSON

    @property
    def checkpoints(self) -> Path:
        return self.workdir / CHECKPOINTS

    def embeddings(self, output: str = EMBEDDINGS) -> Path:
        return self.workdir / output

    def items(self, output: str = EMBEDDINGS) -> Path:
        return self.embeddings(output) / ITEMS

    def members(self, split: str, output: str = EMBEDDINGS) -> Path:
        return self.embeddings(output) / members_folder(split)
