"""CPU time of one training iteration of the real minimax loop, for A/B comparisons of checkouts.

Wall-clock times on a shared 2-core virtual machine vary by ±20 % from minute to minute, so
comparing two versions of the package needs alternating runs and a clock that ignores time
the machine gives to other tenants. This script times ``_MinimaxLoop.step`` (inner steps,
outer step, sampling, optimiser updates; no validation) in process CPU time with one torch
thread and prints the median of ``--repeats`` blocks. It uses only names that have existed
since the loop was introduced, so it runs against older checkouts too::

    git worktree add /tmp/before <commit>
    for round in 1 2 3 4 5 6 7 8; do
      for src in /tmp/before/src src; do
        PYTHONPATH=$src OMP_NUM_THREADS=1 python benchmarks/iteration_time.py --label $src
      done
    done

Measured for the explicit-gradient change (05a181d -> 7bfd54f, D = 50, HyCNN 48x4, batch 256,
2 inner steps, ``--iters 150 --repeats 1``, eight alternating runs each, beside one other
1-thread benchmark): median 39.6 ms -> 33.9 ms per iteration (-14 %). See
``results_profile_step.txt``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from hycnn_sc.models import HyCNN
from hycnn_sc.models._minimax import MinimaxSettings, StackedSamples, _MinimaxLoop


def settings(n_iters: int, inner_steps: int, batch_size: int, tau: float) -> MinimaxSettings:
    return MinimaxSettings(
        n_iters=n_iters, inner_steps=inner_steps, batch_size=batch_size, lr=3e-3,
        lr_final_fraction=0.01, lr_warmup_fraction=0.1, betas=(0.5, 0.9), selection_every=None,
        tau=tau, tau_schedule=None, tau_final=0.0, tau_cycles=1, progress=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[48, 48, 48, 48])
    parser.add_argument("--tau", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--inner", type=int, default=2)
    parser.add_argument("--iters", type=int, default=150, help="iterations per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (median reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    f, g = (HyCNN(args.dim, tuple(args.hidden), tau=args.tau) for _ in range(2))
    device = torch.device("cpu")
    source = StackedSamples([rng.standard_normal((5000, args.dim), dtype=np.float32)], device)
    target = StackedSamples([rng.standard_normal((5000, args.dim), dtype=np.float32) + 1], device)
    total = 20 + args.iters * args.repeats
    loop = _MinimaxLoop(f, g, settings(total, args.inner, args.batch, args.tau), 1, None, None)
    generator = torch.Generator().manual_seed(0)
    for iteration in range(20):  # warm-up
        loop.step(iteration, source, target, generator)
    blocks = []
    for block in range(args.repeats):
        start = time.process_time()
        for iteration in range(20 + block * args.iters, 20 + (block + 1) * args.iters):
            loop.step(iteration, source, target, generator)
        blocks.append((time.process_time() - start) / args.iters * 1e3)
    print(f"{args.label} D={args.dim} batch={args.batch} inner={args.inner} threads={args.threads}: "
          f"{statistics.median(blocks):.2f} ms CPU per iteration (blocks: "
          f"{', '.join(f'{b:.2f}' for b in blocks)})")


if __name__ == "__main__":
    main()
