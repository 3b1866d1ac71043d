"""`ff-jax train` in a subprocess on the toy data, for the fault tests (tests/train/test_faults_*.py):
the gin file, a finished reference run, and what a test reads back from a workdir."""

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from test_resume import GIN as RESUME_GIN
from test_resume import _command, _logged, subprocess_env

# test_resume's toy run, with the encoder bound so `--gin.EncoderConfig.*` reaches it.
GIN = RESUME_GIN + "train.encoder = @EncoderConfig()\n"


class Runs:
    """Runs sharing one gin file and one JAX compilation cache."""

    def __init__(self, root: Path, extra_gin: str = "", name: str = "toy"):
        self.root = root
        self.gin_file = root / f"{name}.gin"
        self.gin_file.write_text(GIN + extra_gin)
        self.env = subprocess_env(root / "jax_cache")

    def command(self, workdir: Path, *bindings: str) -> list[str]:
        return _command(self.gin_file, workdir) + [f"--gin.{b}" for b in bindings]

    def train(self, workdir: Path, *bindings: str, **popen) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(workdir, *bindings), env=self.env, capture_output=True, text=True,
                              timeout=600, **popen)

    def reference(self) -> Path:
        """A finished run (checkpoints 6 and 8 kept)."""
        workdir = self.root / "reference"
        done = self.train(workdir)
        assert done.returncode == 0, done.stderr[-3000:]
        return workdir

    def copy_of(self, workdir: Path, name: str) -> Path:
        return Path(shutil.copytree(workdir, self.root / name))


def losses(workdir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training record, in file order (a resumed run appends)."""
    return [(r["step"], r["loss"]) for r in _logged(workdir) if r["split"] == "train"]


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (computed here, independently of ff_jax.files)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def largest_data_file(checkpoint: Path) -> Path:
    return max((p for p in (checkpoint / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def restored_arrays(checkpoint: Path) -> dict:
    """The checkpoint's arrays read with orbax directly (not through ff_jax's verification)."""
    return ocp.StandardCheckpointer().restore(checkpoint / "state")


def assert_finite_checkpoint(checkpoint: Path) -> None:
    arrays = restored_arrays(checkpoint)
    assert arrays and all(np.all(np.isfinite(np.asarray(v))) for v in arrays.values()), checkpoint

