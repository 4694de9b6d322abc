"""Profile one minimax training iteration: where the time goes.

Times the inner step (second-order autograd through ``∇g``), the outer step and a whole
iteration (5 inner + 1 outer) for HyCNN and ICNN potentials in 50-D with batch 256, and
prints the top operators of the torch profiler for the HyCNN inner step.

    python benchmarks/profile_step.py [--batch 256] [--dim 50]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, print_table

from hycnn_sc.models._convex_base import potential_gradient
from hycnn_sc.models._factory import build_potential
from hycnn_sc.models.objectives import inner_objective, outer_objective


def step_times(model: str, hidden, dim: int, batch: int, repeats: int = 30) -> tuple[float, float]:
    kwargs = {"isotropic_quadratic": 0.1}
    f = build_potential(model, dim, hidden, tau=0.3 if model == "hycnn" else None,
                        network_kwargs=kwargs)
    g = build_potential(model, dim, hidden, tau=0.3 if model == "hycnn" else None,
                        network_kwargs=kwargs)
    g_params = list(g.parameters())
    optimizer_f, optimizer_g = torch.optim.Adam(f.parameters()), torch.optim.Adam(g_params)
    x, y = torch.randn(batch, dim), torch.randn(batch, dim)

    def inner():
        loss, _ = inner_objective(f, g, y)
        for param, grad in zip(g_params, torch.autograd.grad(loss.sum(), g_params), strict=True):
            param.grad = grad
        optimizer_g.step()

    def outer():
        mapped = potential_gradient(g, y).detach()
        loss = outer_objective(f, x, mapped)
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
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=50)
    args = parser.parse_args()
    print(f"# Training-step profile, d = {args.dim}, batch {args.batch}; {machine()}\n")
    rows = []
    for label, model, hidden in (("HyCNN 48x4", "hycnn", (48,) * 4), ("ICNN 64x4", "icnn", (64,) * 4)):
        inner_ms, outer_ms = step_times(model, hidden, args.dim, args.batch)
        rows.append([label, f"{inner_ms:.2f}", f"{outer_ms:.2f}", f"{5 * inner_ms + outer_ms:.1f}",
                     f"{(5 * inner_ms + outer_ms) * 1000 / 1000:.0f}"])
    print_table(["potential", "inner step ms", "outer step ms", "iteration ms (5+1)",
                 "1000 iterations s"], rows)

    f = build_potential("hycnn", args.dim, (48,) * 4, tau=0.3)
    g = build_potential("hycnn", args.dim, (48,) * 4, tau=0.3)
    y = torch.randn(args.batch, args.dim)
    with torch.profiler.profile() as profiler:
        for _ in range(20):
            loss, _ = inner_objective(f, g, y)
            torch.autograd.grad(loss.sum(), list(g.parameters()))
    print("\nTop operators of the HyCNN inner step (20 steps):\n")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
