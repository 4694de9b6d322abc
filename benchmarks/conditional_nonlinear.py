"""Does conditional training help where the response is nonlinear and the data support it?

A known truth: four conditions share a Gaussian source ``N(0, I_d)``; condition ``c`` moves a
cell by ``T_c(x) = x + α_c · max(x, 0) + s_c`` (the gradient of a convex potential, so the OT
map; ``α = 0.5, 1, 2, 3``, shift ``s_c = 0.5`` in one coordinate per condition). One
:class:`~hycnn_sc.models.ConditionalTransportMap` at project defaults is fitted on ``n`` source
and ``n`` target cells per condition (different cells), for small and large ``n``, and scored
on fresh source cells by L2-UVP (100 · E‖T̂(x) − T(x)‖² / Var T(x), lower is better) beside
the identity, each condition's mean shift and its Gaussian (linear) map fitted on the same
cells. ``network``: the conditional network alone (``λ = 1``), whatever the selection chose.

With few cells the network's held-out energy rises in training (as on the Perturb-seq
conditions, ``conditional_selection_trace.py``) and the map should stay linear; with many it
should depart from the linear map and beat it.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/conditional_nonlinear.py [--n 200 2000] [--seeds 0 1]
        [--params '{"lr": 1e-3}']
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
from _common import machine, print_table
from conditional import budget, network_alone

from hycnn_sc.models import ConditionalTransportMap, GaussianTransportMap

DIM = 8
ALPHAS = {"A": 0.5, "B": 1.0, "C": 2.0, "D": 3.0}
N_TEST = 4000


def truth(x: np.ndarray, label: str) -> np.ndarray:
    shift = np.zeros(DIM)
    shift[list(ALPHAS).index(label)] = 0.5
    return x + ALPHAS[label] * np.maximum(x, 0.0) + shift


def uvp(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(100 * np.square(predicted - true).sum(1).mean() / true.var(0).sum())


def run(n: int, seed: int, params: dict) -> list[list]:
    rng = np.random.default_rng(seed)
    labels = list(ALPHAS)
    sources = [rng.normal(size=(n, DIM)).astype(np.float32) for _ in labels]
    targets = [truth(rng.normal(size=(n, DIM)), lab).astype(np.float32) for lab in labels]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cmap = ConditionalTransportMap(seed=seed, device="cpu", **params).fit(sources, targets, labels)
    seconds = time.perf_counter() - start
    test = rng.normal(size=(N_TEST, DIM))
    rows = []
    for lab, source, target in zip(labels, sources, targets, strict=True):
        true = truth(test, lab)
        scores = {
            "identity": uvp(test, true),
            "mean_shift": uvp(test + target.mean(0) - source.mean(0), true),
            "gaussian": uvp(GaussianTransportMap(regularization=1e-3).fit(source, target)
                            .transport(test), true),
            "conditional": uvp(cmap.transport(test, lab), true),
            "network": uvp(network_alone(cmap, test, lab, None), true),
        }
        better = min(scores["mean_shift"], scores["gaussian"])
        rows.append([n, seed, lab, *(f"{scores[k]:.2f}" for k in scores),
                     f"{scores['conditional'] / better:.3f}", f"{cmap.residual_weight_:g}",
                     budget(cmap),
                     str(cmap.converged_), f"{seconds:.0f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 2000],
                        help="source and target cells per condition")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--params", default="{}", help="JSON of extra ConditionalTransportMap arguments")
    args = parser.parse_args()
    params = json.loads(args.params)
    print(f"# conditional training on a nonlinear truth (d = {DIM}, 4 conditions) — {machine()}; "
          f"extra arguments {params}\n")
    header = ["cells", "seed", "condition", "identity", "mean_shift", "gaussian", "conditional",
              "network", "ratio", "λ", "iters (best)", "converged_", "fit s"]
    rows = [row for n in args.n for seed in args.seeds for row in run(n, seed, params)]
    print("## L2-UVP % against the true map (ratio: conditional / the better linear baseline)")
    print_table(header, rows)


if __name__ == "__main__":
    main()
