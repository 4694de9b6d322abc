"""OT accuracy on a nonlinear ground truth: the Wasserstein-2 benchmark of Korotin et al. (2021).

The "Mix3toMix10" pairs (:func:`hycnn_sc.datasets.w2_benchmark_pair`): source = a three-component
Gaussian mixture in D dimensions, target = its image under the gradient of a pretrained convex
network, so the true OT map ``T*`` is known. Each fit sees ``--n`` source points and ``--n``
target points (independent draws: unpaired, as a solver would see them) and is scored on 2^14
fresh source points by

    L2-UVP = 100 · E‖T̂(x) − T*(x)‖² / Var(target)   (%)

Rows: the identity and the population linear map (the paper's [ID] and [L], to check the
loader), the Gaussian map fitted on the same samples, ``TransportMap`` at project defaults for
HyCNN and ICNN (wall time, outer iterations run, ``converged_``), and the paper's published
rows beside them.

    python -u benchmarks/w2_benchmark.py [--dims 16 64] [--n 10000] [--seeds 1]
        [--directory ../shared/data/w2bench] [--n-iters 1000 5000] [--models hycnn icnn]
        [--skip-defaults] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import machine, mean_spread, print_table

from hycnn_sc.datasets import w2_benchmark_pair
from hycnn_sc.datasets._w2bench import PUBLISHED_L2_UVP
from hycnn_sc.models import GaussianTransportMap, TransportMap
from hycnn_sc.models._minimax import IMPROVEMENT_Z, energy_profile, paired_standard_error

DEFAULT_DIRECTORY = Path(__file__).resolve().parents[2] / "shared" / "data" / "w2bench"
N_TEST = 2**14
#: Test points of the held-out energy distance (mapped test points vs fresh target points).
N_ENERGY = 2000


def held_out_profile(mapped: np.ndarray, observed: np.ndarray):
    """Energy distance of mapped test points to fresh target points, with its per-point terms."""
    mapped_t, observed_t = torch.as_tensor(mapped[:N_ENERGY]), torch.as_tensor(observed[:N_ENERGY])
    return energy_profile(mapped_t, observed_t, float(torch.cdist(observed_t, observed_t).mean()))


def start_run(args, title: str) -> dict:
    """Set torch's threads, print ``title`` with the machine, and return the extra
    ``TransportMap`` arguments of ``--params``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = json.loads(args.params)
    print(f"# {title}; {machine()}")
    if extra:
        print(f"# extra TransportMap arguments: {extra}")
    return extra


def pair_and_test_points(dim: int, directory: str):
    """The benchmark pair of dimension ``dim`` and its 2^14 fixed test source points."""
    pair = w2_benchmark_pair(dim, directory=directory)
    return pair, pair.mixture.sample(N_TEST, seed=1)


def benchmark_samples(pair, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` source and ``n`` target points of benchmark seed ``seed`` (independent draws)."""
    return pair.mixture.sample(n, seed=100 + seed), pair.true_map(pair.mixture.sample(n, seed=200 + seed))


def fit_and_score(pair, source, target, test, params: dict) -> dict:
    """Fit one ``TransportMap`` and return its L2-UVP, wall time, iterations, ``converged_`` and
    the mapped test points."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        tmap = TransportMap(device="cpu", **params).fit(source, target)
        seconds = time.perf_counter() - start
    losses = np.asarray(tmap.history_.get("loss_f", []))
    mapped = tmap.transport(test)
    return {
        "l2_uvp": pair.l2_uvp(test, mapped),
        "mapped": mapped,
        "energy": held_out_profile(mapped, pair.true_map(pair.mixture.sample(N_ENERGY, seed=2))),
        "seconds": seconds,
        "iterations": int(np.isfinite(losses).sum()),
        "converged": bool(tmap.converged_),
        "residual": float(tmap.residual_weight_),
        "warned": any("converge" in str(w.message).lower() or "iterations" in str(w.message).lower()
                      for w in caught),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--n", type=int, default=10_000, help="points per side")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--directory", default=str(DEFAULT_DIRECTORY))
    parser.add_argument("--models", nargs="+", default=["hycnn", "icnn"])
    parser.add_argument("--n-iters", type=int, nargs="*", default=[],
                        help="fixed budgets to run besides the default")
    parser.add_argument("--params", default="{}", help="JSON of extra TransportMap arguments")
    parser.add_argument("--skip-defaults", action="store_true",
                        help="only the fixed budgets of --n-iters, not the project defaults")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    extra = start_run(args, f"W2 benchmark (Mix3toMix10), {args.n} points a side, L2-UVP (%) on "
                             f"{N_TEST} test points")
    rows, budgets = [], []
    for dim in args.dims:
        pair, test = pair_and_test_points(dim, args.directory)
        matrix, shift = pair.linear_map()
        published = {label: values.get(dim) for label, values in PUBLISHED_L2_UVP.items()}
        rows.append([dim, "identity [ID]", f"{pair.l2_uvp(test, test):.1f}", "-", "-", "-",
                     f"{published['identity [ID]'] or '-'}"])
        rows.append([dim, "linear map, population moments [L]",
                     f"{pair.l2_uvp(test, test @ matrix.T + shift):.1f}", "-", "-", "-",
                     f"{published['linear map [L]'] or '-'}"])
        samples = [benchmark_samples(pair, args.n, s) for s in range(args.seeds)]
        gaussian = [pair.l2_uvp(test, GaussianTransportMap().fit(x, y).transport(test)) for x, y in samples]
        rows.append([dim, "Gaussian map fitted on the samples", mean_spread(gaussian), "-", "-", "-", "-"])
        for model in args.models:
            for n_iters in ([] if args.skip_defaults else [None]) + args.n_iters:
                params = dict(extra, model=model)
                if n_iters is not None:
                    params["n_iters"] = n_iters
                results = [fit_and_score(pair, x, y, test, dict(params, seed=s))
                           for s, (x, y) in enumerate(samples)]
                budgets.append((dim, model, n_iters, results))
                label = f"{model.upper() if model == 'icnn' else 'HyCNN'}, " + (
                    "defaults" if n_iters is None else f"n_iters={n_iters}")
                rows.append([
                    dim, label, mean_spread([r["l2_uvp"] for r in results]),
                    f"{np.mean([r['seconds'] for r in results]):.0f}",
                    "/".join(str(r["iterations"]) for r in results),
                    "/".join("yes" if r["converged"] else "no (warned)" if r["warned"] else "no"
                             for r in results),
                    f"best published {published['best published solver']}"
                    if published["best published solver"] else "-",
                ])
                print_table(["D", "map", "L2-UVP %", "fit s", "outer iterations", "converged_",
                             "paper"], rows[-1:])
    print(f"\n({args.seeds} seed(s); published values: Korotin et al. 2021, Table 2)\n")
    print_table(["D", "map", "L2-UVP %", "fit s", "outer iterations", "converged_", "paper"], rows)
    print_budget_comparison(budgets)


def print_budget_comparison(budgets) -> None:
    """Each fixed budget against 5x that budget: did the longer run improve beyond the noise?"""
    rows = []
    runs = {(dim, model, n_iters): results for dim, model, n_iters, results in budgets}
    for (dim, model, n_iters), short in runs.items():
        long = runs.get((dim, model, 5 * n_iters)) if n_iters else None
        if long is None:
            continue
        for seed, (a, b) in enumerate(zip(short, long, strict=True)):
            gain = a["energy"].value - b["energy"].value
            se = paired_standard_error(b["energy"], a["energy"])
            rows.append([dim, model, seed, n_iters, "yes" if a["converged"] else "no",
                         f"{a['l2_uvp']:.1f} -> {b['l2_uvp']:.1f}",
                         f"{a['energy'].value:.4f} -> {b['energy'].value:.4f}", f"{se:.4f}",
                         "yes" if gain > IMPROVEMENT_Z * se else "no"])
    if rows:
        print(f"\nShort budget vs 5x: held-out energy distance on {N_ENERGY} test points a side, "
              f"paired standard error; 'beyond noise' = gain > {IMPROVEMENT_Z} SE\n")
        print_table(["D", "model", "seed", "short budget", "converged_ (short)", "L2-UVP % short -> 5x",
                     "energy short -> 5x", "paired SE", "5x better beyond noise"], rows)


if __name__ == "__main__":
    main()
