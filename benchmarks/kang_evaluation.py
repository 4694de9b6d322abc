"""Held-out evaluation on real Kang 2018 IFN-β PBMC data: HyCNN and ICNN maps vs baselines.

Datasets: the shipped ``kang_ifnb1k`` (raw counts; normalised, log1p, 2000 HVGs, 50 PCs here)
and ``../shared/data/kang_scgen_valid.h5ad`` (log1p; 2000 HVGs, 50 PCs recomputed), when
present. 20 % of each condition is held out (``holdout_fraction=0.2``); every metric
compares predicted with observed held-out stimulated cells in 50-PC space. Prints, per
dataset, mean ± sd over seeds for every method overall, and the energy distance per cell
type (model vs Gaussian OT).

    python benchmarks/kang_evaluation.py [--seeds 3] [--n-iters 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import machine, print_table

import hycnn_sc as hs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang_scgen_valid.h5ad"


def load(name: str) -> ad.AnnData:
    if name == "kang_ifnb1k":
        adata = hs.datasets.kang_ifnb1k()
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    else:
        adata = ad.read_h5ad(SHARED)
        adata.obs["condition"] = adata.obs["condition"].astype(str).astype("category")
        adata.obsm.pop("X_pca", None)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    sc.pp.pca(adata, n_comps=50, random_state=0)
    return adata


def run(adata: ad.AnnData, model: str, seed: int, n_iters: int) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    key = f"{model}_{seed}"
    hs.tl.fit_transport(adata, groupby="condition", source="control", target="stimulated",
                        model=model, seed=seed, n_iters=n_iters, key_added=key, device="cpu",
                        holdout_fraction=0.2)
    seconds = time.perf_counter() - start
    table = hs.tl.evaluate(adata, key=key, by="cell_type", gene_space_metrics=False, seed=seed)
    return table.assign(seed=seed, fitted_model=model), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-iters", type=int, default=1000)
    args = parser.parse_args()
    print(f"# Kang IFN-β held-out evaluation, 50 PCs, {args.n_iters} iterations; {machine()}")
    names = ["kang_ifnb1k"] + (["kang_scgen_valid"] if SHARED.exists() else [])
    for name in names:
        adata = load(name)
        tables, times = [], {"hycnn": [], "icnn": []}
        for seed in range(args.seeds):
            for model in ("hycnn", "icnn"):
                table, seconds = run(adata, model, seed, args.n_iters)
                tables.append(table)
                times[model].append(seconds)
        full = pd.concat(tables)
        full["method"] = np.where(full["method"] == full["fitted_model"], full["fitted_model"]
                                  + "_map", full["method"])
        overall = full[(full["group"] == "all") & (full["space"] == "rep")]
        # Baselines do not depend on the fitted model: keep the HyCNN runs' copy.
        overall = overall[(overall["fitted_model"] == "hycnn") | (overall["method"] == "icnn_map")]
        stats = overall.groupby("method")[["mmd", "energy_distance", "r2_mean", "signature_l2"]]
        mean, std = stats.mean(), stats.std()
        order = ["hycnn_map", "icnn_map", "gaussian_ot", "mean_shift", "identity", "observed"]
        floor = mean.loc["observed", "energy_distance"]
        rows = [[m] + [f"{mean.loc[m, c]:.4f} ± {std.loc[m, c]:.4f}" for c in mean.columns]
                + [f"{mean.loc[m, 'energy_distance'] / floor:.1f}x"] for m in order]
        print(f"\n## {name}: {adata.n_obs} cells, held-out 20 %, {args.seeds} seeds; fit time "
              f"HyCNN {np.mean(times['hycnn']):.0f} s, ICNN {np.mean(times['icnn']):.0f} s\n")
        print_table(["method", "MMD", "energy distance", "r² means", "signature l2",
                     "energy / observed floor"], rows)
        per_type = full[(full["group"] != "all") & (full["space"] == "rep")
                        & (full["fitted_model"] == "hycnn")]
        pivot = per_type.pivot_table(index="group", columns="method", values="energy_distance",
                                     aggfunc="mean")
        rows = [[group, f"{r['hycnn_map']:.3f}", f"{r['gaussian_ot']:.3f}", f"{r['mean_shift']:.3f}",
                 f"{r['identity']:.3f}", f"{r['observed']:.3f}",
                 "yes" if r["hycnn_map"] < r["gaussian_ot"] else "no"]
                for group, r in pivot.iterrows()]
        print("\nEnergy distance per cell type (held-out cells, mean over seeds):\n")
        print_table(["cell type", "HyCNN", "Gaussian OT", "mean shift", "identity", "observed",
                     "HyCNN better"], rows)


if __name__ == "__main__":
    main()
