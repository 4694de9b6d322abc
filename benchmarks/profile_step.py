"""Where the training time goes: one minimax iteration, timed in the real training loop.

Times :func:`hycnn_sc.models._minimax.train_minimax` (no validation) per outer iteration for
HyCNN 48x4 and ICNN 64x4 potentials, over dimensions, batch sizes and inner steps, and splits
one iteration into its inner step (second-order autograd through ``∇g``), its outer step and
the rest (sampling, learning-rate and bookkeeping). Prints the top operators of the torch
profiler for one HyCNN iteration.

    python -u benchmarks/profile_step.py [--dims 16 64] [--batches 256 1024] [--inner 1 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import machine, print_table

from hycnn_sc.models._convex_base import potential_gradient
from hycnn_sc.models._factory import build_potential
from hycnn_sc.models._minimax import MinimaxSettings, StackedSamples, set_gradients, train_minimax
from hycnn_sc.models.objectives import inner_objective, outer_objective

MODELS = (("HyCNN 48x4", "hycnn", (48,) * 4, 0.3), ("ICNN 64x4", "icnn", (64,) * 4, None))


def potentials(model: str, hidden, dim: int, tau):
    kwargs = {"isotropic_quadratic": 0.1}
    return [build_potential(model, dim, hidden, tau=tau, network_kwargs=kwargs) for _ in range(2)]


def iteration_ms(model, hidden, tau, dim: int, batch: int, inner: int, n_iters: int = 60) -> float:
    """Milliseconds per outer iteration of the real loop (after 10 warm-up iterations)."""
    rng = np.random.default_rng(0)
    source = StackedSamples([rng.normal(size=(10_000, dim)).astype(np.float32)], torch.device("cpu"))
    target = StackedSamples([rng.normal(size=(10_000, dim)).astype(np.float32)], torch.device("cpu"))
    times = []
    for iterations in (10, n_iters):
        f, g = potentials(model, hidden, dim, tau)
        settings = MinimaxSettings(
            n_iters=iterations, inner_steps=inner, batch_size=batch, lr=1e-3, lr_final_fraction=0.01,
            lr_warmup_fraction=0.1, betas=(0.5, 0.9), selection_every=iterations,
            tau=tau, tau_schedule=None, tau_final=0.0, tau_cycles=1, progress=False)
        start = time.perf_counter()
        train_minimax(f, g, source, target, settings, torch.Generator().manual_seed(0))
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / (n_iters - 10) * 1000


def split_ms(model, hidden, tau, dim: int, batch: int, repeats: int = 30) -> tuple[float, float]:
    """Milliseconds of one inner step and one outer step, alone."""
    f, g = potentials(model, hidden, dim, tau)
    g_params = list(g.parameters())
    optimizer_f, optimizer_g = torch.optim.Adam(f.parameters()), torch.optim.Adam(g_params)
    x, y = torch.randn(batch, dim), torch.randn(batch, dim)

    def inner():
        loss, _ = inner_objective(f, g, y)
        set_gradients(loss.sum(), g_params)
        optimizer_g.step()

    def outer():
        loss = outer_objective(f, x, potential_gradient(g, y).detach())
        optimizer_f.zero_grad()
        loss.sum().backward()
        optimizer_f.step()

    results = []
    for function in (inner, outer):
        for _ in range(3):
            function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        results.append((time.perf_counter() - start) / repeats * 1000)
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--inner", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args()
    print(f"# Training-step profile; {machine()}\n")
    rows = []
    for dim in args.dims:
        for label, model, hidden, tau in MODELS:
            for batch in args.batches:
                inner_ms, outer_ms = split_ms(model, hidden, tau, dim, batch)
                for inner in args.inner:
                    total = iteration_ms(model, hidden, tau, dim, batch, inner)
                    rows.append([dim, label, batch, inner, f"{inner_ms:.2f}", f"{outer_ms:.2f}",
                                 f"{total:.2f}", f"{total - inner * inner_ms - outer_ms:.2f}",
                                 f"{1000 * 60 / total:.0f}"])
                    print_table(["D", "potential", "batch", "inner steps", "inner step ms",
                                 "outer step ms", "iteration ms (loop)", "rest ms",
                                 "iterations / minute"], rows[-1:])
    print()
    print_table(["D", "potential", "batch", "inner steps", "inner step ms", "outer step ms",
                 "iteration ms (loop)", "rest ms", "iterations / minute"], rows)

    f, g = potentials("hycnn", (48,) * 4, args.dims[-1], 0.3)
    y = torch.randn(args.batches[0], args.dims[-1])
    with torch.profiler.profile() as profiler:
        for _ in range(20):
            loss, _ = inner_objective(f, g, y)
            set_gradients(loss.sum(), list(g.parameters()))
    print(f"\nTop operators of the HyCNN inner step (D = {args.dims[-1]}, batch {args.batches[0]}, "
          "20 steps):\n")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
