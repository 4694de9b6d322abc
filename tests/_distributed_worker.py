"""Run by tests/test_distributed.py under torchrun: fit 5 small maps over the ranks."""

import json
import sys

import numpy as np
import torch.distributed as dist

from hycnn_sc.models.distributed import fit_many_distributed

rng = np.random.default_rng(0)
control = rng.normal(size=(200, 3)).astype(np.float32)
targets = [control * (1 + 0.2 * k) + k for k in range(5)]
dist.init_process_group("gloo")
maps = fit_many_distributed([control] * 5, targets, n_iters=30, hidden=(8,), seed=0,
                            warm_start_iters=300, device="cpu")
means = [m.transport(control).mean(0).tolist() for m in maps]
if dist.get_rank() == 0:
    json.dump({"world": dist.get_world_size(), "means": means}, open(sys.argv[1], "w"))
dist.destroy_process_group()
