"""Where the Wasserstein-2 benchmark's remaining error comes from: the fit's seed, or the data.

Issue 12 asks for L2-UVP ≤ 2 % (D = 16) and ≤ 5 % (D = 64) from 10,000 points a side. This
script splits the error of ``TransportMap`` at project defaults into the part that changes with
the fit's seed (initialisation, batches, selection split) and the part every seed shares (the
finite sample, the network and its budget). It fits ``--fit-seeds`` maps on *the same* samples
(those of ``w2_benchmark.py``'s seed 0) and scores the average map ``(1/k) Σ ∇f_i`` of every
subset of ``k`` fits: the average of convex potentials is convex, so each average is itself a
map of the Brenier form. Its expected error is

    L2-UVP(k) = shared + seed / k,

``shared = 100·E‖E_seed[T̂](x) − T*(x)‖² / Var(target)`` and ``seed`` the mean spread of one
fit around that mean; both are fitted by least squares to the subset averages. ``shared`` is
what no number of seeds (nor an ensemble of any size) can remove at this sample size.

    python -u benchmarks/w2_limits.py [--dims 16 64] [--n 10000] [--fit-seeds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from _common import print_table
from w2_benchmark import (
    DEFAULT_DIRECTORY,
    benchmark_samples,
    fit_and_score,
    pair_and_test_points,
    start_run,
)


def decomposition(pair, test: np.ndarray, mapped: list[np.ndarray]) -> tuple[dict[int, float], float, float]:
    """Mean L2-UVP of the averages of every ``k``-subset, and the fitted ``(shared, seed)``."""
    by_size = {
        k: float(np.mean([pair.l2_uvp(test, np.mean([mapped[i] for i in subset], axis=0))
                          for subset in itertools.combinations(range(len(mapped)), k)]))
        for k in range(1, len(mapped) + 1)
    }
    sizes = np.array(list(by_size), dtype=float)
    design = np.stack([np.ones_like(sizes), 1.0 / sizes], axis=1)
    shared, seed = np.linalg.lstsq(design, np.array(list(by_size.values())), rcond=None)[0]
    return by_size, float(shared), float(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--n", type=int, default=10_000, help="points per side")
    parser.add_argument("--fit-seeds", type=int, default=3, help="fits on the same samples")
    parser.add_argument("--directory", default=str(DEFAULT_DIRECTORY))
    parser.add_argument("--params", default="{}", help="JSON of extra TransportMap arguments")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.fit_seeds < 2:
        parser.error("--fit-seeds must be at least 2 to separate the seed's share of the error")
    extra = start_run(args, f"W2 benchmark error decomposition, {args.n} points a side (the "
                            f"samples of seed 0), {args.fit_seeds} fits each")
    fit_rows, summary = [], []
    for dim in args.dims:
        pair, test = pair_and_test_points(dim, args.directory)
        source, target = benchmark_samples(pair, args.n, seed=0)
        results = []
        for seed in range(args.fit_seeds):
            result = fit_and_score(pair, source, target, test, dict(extra, seed=seed))
            results.append(result)
            fit_rows.append([dim, seed, f"{result['l2_uvp']:.3f}", f"{result['seconds']:.0f}",
                             result["iterations"], "yes" if result["converged"] else "no"])
            print_table(["D", "fit seed", "L2-UVP %", "fit s", "outer iterations", "converged_"],
                        fit_rows[-1:])
        by_size, shared, seed_part = decomposition(pair, test, [r["mapped"] for r in results])
        summary.append([dim, *(f"{by_size[k]:.3f}" for k in sorted(by_size)),
                        f"{shared:.2f}", f"{seed_part:.2f}"])
    print(f"\n{args.n} points a side; the same samples for every fit\n")
    print_table(["D", "fit seed", "L2-UVP %", "fit s", "outer iterations", "converged_"], fit_rows)
    print("\nL2-UVP % of the average map of k fits (mean over the subsets of size k); "
          "least-squares fit of shared + seed / k\n")
    print_table(["D", *(f"k = {k}" for k in range(1, args.fit_seeds + 1)),
                 "shared (k → ∞)", "seed part (k = 1)"], summary)


if __name__ == "__main__":
    main()
