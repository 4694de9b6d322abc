"""Does conditional training improve on its warm start? The held-out selection energy of one fit.

Fits one ``ConditionalTransportMap`` on the Perturb-seq subset (lines K562 and A172, 80 % of
the cells, 30 PCs, as ``conditional.py``'s in-distribution protocol) for each inner-step
setting and prints the best iterate, ``converged_``, the chosen residual weight and the
held-out selection energy along training (the first check is the warm start).

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/conditional_selection_trace.py --n-iters 400
"""

from __future__ import annotations

import argparse
import json

import conditional
import numpy as np
from conditional import conditional_fit, perturbseq, project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-iters", type=int, default=400)
    parser.add_argument("--inner", type=int, nargs="+", default=[5, 2])
    parser.add_argument("--lines", nargs="+", default=["k562", "A172"])
    parser.add_argument("--params", nargs="+", default=["{}"],
                        help="JSON dicts of extra ConditionalTransportMap arguments, one fit each "
                             "(crossed with --inner)")
    args = parser.parse_args()
    x, condition, line = perturbseq()
    train = np.random.default_rng(0).random(len(condition)) >= 0.2
    z = project(x, train, 30, 0)
    rows = train & np.isin(line, args.lines)
    for params in args.params:
        for inner in args.inner:
            conditional.EXTRA.clear()
            conditional.EXTRA.update({"inner_steps": inner, **json.loads(params)})
            cmap, seconds = conditional_fit(z, condition, line, rows, "control", args.n_iters, 0)
            energy = cmap.history_["selection_energy"]
            record = cmap.selection_
            residual = {k.removeprefix("energy_residual_"): v for k, v in record.items()
                        if k.startswith("energy_residual_")}
            print(f"{params} inner_steps={inner}: best_iteration_={cmap.best_iteration_}, "
                  f"converged_={cmap.converged_}, residual_weight_={cmap.residual_weight_}, "
                  f"{seconds:.0f} s; residual test (energy by λ, pooled held-out cells): "
                  f"{', '.join(f'{k}: {v:.3f}' for k, v in residual.items())}; "
                  f"held-out selection energy at the checks: "
                  f"{', '.join(f'{e:.3f}' for e in energy)}", flush=True)


if __name__ == "__main__":
    main()
