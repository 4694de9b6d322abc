"""Many perturbation maps at once: one batched fit of K maps vs K separate fits.

Real: the shipped Perturb-seq subset (33 perturbations + control, log1p, 50 PCs): one
``fit_transport(target=None)`` call trains all 33 maps as one stacked computation. We time
it against one map fitted alone and compare per-map held-out energy distance of the batched
maps with separate fits of a few perturbations. Synthetic: K = 200 random Gaussian-shift maps
in 50-D (1000 cells each) batched, against the time of one.

    python benchmarks/many_maps.py [--n-iters 1000] [--separate 4] [--synthetic-k 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scanpy as sc
from _common import machine, print_table

import hycnn_sc as hs
from hycnn_sc.models import TransportMap


def perturbseq():
    adata = hs.datasets.perturbseq_devel()
    sc.pp.pca(adata, n_comps=50, random_state=0)
    return adata


def held_out_energy(adata, key: str) -> dict[str, float]:
    table = hs.tl.evaluate(adata, key=key, gene_space_metrics=False, max_cells=500)
    rows = table[(table["group"] == "all") & (table["space"] == "rep") & (table["method"] == "hycnn")]
    return dict(zip(rows["target"], rows["energy_distance"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-iters", type=int, default=1000)
    parser.add_argument("--separate", type=int, default=4, help="perturbations fitted alone")
    parser.add_argument("--synthetic-k", type=int, default=200)
    parser.add_argument("--synthetic-iters", type=int, default=100,
                        help="iterations of the synthetic runs (timing only)")
    args = parser.parse_args()
    print(f"# Many maps at once, {args.n_iters} iterations; {machine()}")
    options = dict(groupby="condition", source="control", n_iters=args.n_iters, seed=0,
                   device="cpu")

    adata = perturbseq()
    targets = [t for t in adata.obs["condition"].cat.categories if t != "control"]
    start = time.perf_counter()
    hs.tl.fit_transport(adata, target=None, key_added="batched", **options)
    batched_seconds = time.perf_counter() - start
    batched = held_out_energy(adata, "batched")

    separate, single_times = {}, []
    for label in targets[: args.separate]:
        start = time.perf_counter()
        hs.tl.fit_transport(adata, target=label, key_added="single", **options)
        single_times.append(time.perf_counter() - start)
        separate[label] = held_out_energy(adata, "single")[label]
    one = float(np.mean(single_times))
    print(f"\n## Perturb-seq subset: K = {len(targets)} maps, {adata.n_obs} cells, 50 PCs\n")
    print_table(
        ["fit", "wall s", "x one map"],
        [[f"one map alone (mean of {len(single_times)})", f"{one:.1f}", "1.0"],
         [f"all {len(targets)} maps batched", f"{batched_seconds:.1f}",
          f"{batched_seconds / one:.1f}"],
         [f"{len(targets)} separate fits (extrapolated)", f"{one * len(targets):.0f}",
          f"{len(targets):.0f}"]],
    )
    print("\nHeld-out energy distance, batched vs separate fit:\n")
    print_table(["perturbation", "batched", "separate"],
                [[label, f"{batched[label]:.4f}", f"{separate[label]:.4f}"] for label in separate])

    rng = np.random.default_rng(0)
    d, n = 50, 1000
    control = rng.normal(size=(n, d)).astype(np.float32)
    shifts = rng.normal(scale=0.5, size=(args.synthetic_k, d))
    stretch = rng.uniform(0.7, 1.3, size=(args.synthetic_k, d))
    targets_k = [(rng.normal(size=(n, d)) * s + m).astype(np.float32) for m, s in zip(shifts, stretch, strict=True)]
    params = dict(n_iters=args.synthetic_iters, seed=0, device="cpu")
    start = time.perf_counter()
    TransportMap(**params).fit(control, targets_k[0])
    one = time.perf_counter() - start
    start = time.perf_counter()
    TransportMap.fit_many([control] * args.synthetic_k, targets_k, **params)
    many = time.perf_counter() - start
    print(f"\n## Synthetic: K = {args.synthetic_k} maps, {n} cells each, {d}-D, "
          f"{args.synthetic_iters} iterations\n")
    print_table(["fit", "wall s", "x one map"],
                [["one map", f"{one:.1f}", "1.0"],
                 [f"{args.synthetic_k} maps batched", f"{many:.1f}", f"{many / one:.1f}"]])


if __name__ == "__main__":
    main()
