"""Multi-host: two jax.distributed processes on localhost (2 CPU devices each) train on the same
global batch as one process with 4 devices, and log the same losses."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_resume import subprocess_env

pytestmark = [pytest.mark.xdist_group("train_subprocess"), pytest.mark.slow]

WORKER = Path(__file__).resolve().parent / "multihost_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
    cache = tmp_path / "jax_cache"
    single = subprocess.run([sys.executable, str(WORKER), "0", "1", "0", str(tmp_path / "single.json")],
                            env=subprocess_env(cache, devices=4), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    env = subprocess_env(cache, devices=2)
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(i), "2", str(port), str(tmp_path / f"p{i}.json")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    for proc in workers:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    reference = json.loads((tmp_path / "single.json").read_text())
    assert reference["process_count"] == 1 and reference["devices"] == 4
    for i in range(2):
        result = json.loads((tmp_path / f"p{i}.json").read_text())
        assert result["process_count"] == 2 and result["devices"] == 4
        np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5)
    assert reference["losses"][0] != reference["losses"][-1]
