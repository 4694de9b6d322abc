"""fit_many_distributed with two CPU processes launched by torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hycnn_sc.models.distributed import fit_many_distributed


def test_two_processes_fit_all_maps(tmp_path):
    out = tmp_path / "result.json"
    worker = Path(__file__).with_name("_distributed_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(worker), str(out)]
    source_dir = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join(filter(None, [source_dir, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2
    means = np.asarray(result["means"])
    # Map k shifts the control (mean ~0) by about k: every map, from either rank, is fitted.
    assert means.shape == (5, 3)
    np.testing.assert_allclose(means.mean(1), np.arange(5), atol=0.5)


def test_needs_a_process_group(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        fit_many_distributed([np.zeros((4, 2))], [np.ones((4, 2))], n_iters=1)
