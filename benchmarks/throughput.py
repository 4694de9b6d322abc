"""Inference throughput and atlas-size input.

1. ``TransportMap.transport`` of 10^6 cells × 50 dims (chunked; peak memory reported).
2. ``fit_transport`` on a synthetic 10^6-cell AnnData with sparse counts ``X`` and a
   precomputed ``X_pca``: in memory, and backed (``read_h5ad(backed="r")``, X never loaded).
   Peak resident memory is reported so you can see the gene matrix is never densified.

    python benchmarks/throughput.py [--cells 1000000] [--n-iters 200]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from _common import machine, print_table
from scipy import sparse

import hycnn_sc as hs
from hycnn_sc.models import TransportMap


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def synthetic_atlas(n_cells: int, n_genes: int = 2000, d: int = 50, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    density = 0.05
    nnz = int(n_cells * n_genes * density)
    rows = np.repeat(np.arange(n_cells), int(n_genes * density))[:nnz]
    cols = rng.integers(0, n_genes, size=len(rows))
    counts = sparse.csr_matrix((rng.poisson(2.0, size=len(rows)).astype(np.float32) + 1, (rows, cols)),
                               shape=(n_cells, n_genes))
    condition = np.where(rng.random(n_cells) < 0.5, "control", "stimulated")
    pcs = rng.normal(size=(n_cells, d)).astype(np.float32)
    pcs[condition == "stimulated"] *= rng.uniform(0.8, 1.2, size=d).astype(np.float32)
    pcs[condition == "stimulated"] += 0.5
    obs = pd.DataFrame({"condition": pd.Categorical(condition)},
                       index=pd.Index([f"cell{i}" for i in range(n_cells)]))
    adata = ad.AnnData(X=counts, obs=obs)
    adata.obsm["X_pca"] = pcs
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--n-iters", type=int, default=200)
    args = parser.parse_args()
    print(f"# Throughput and atlas-size input; {machine()}")
    rng = np.random.default_rng(0)
    source = rng.normal(size=(5000, 50)).astype(np.float32)
    target = (source * 1.2 + 0.3).astype(np.float32)
    tmap = TransportMap(n_iters=50, seed=0, device="cpu").fit(source, target)
    cells = rng.normal(size=(args.cells, 50)).astype(np.float32)
    before = peak_gib()
    start = time.perf_counter()
    moved = tmap.transport(cells, progress=True)
    seconds = time.perf_counter() - start
    rows = [[f"transport {args.cells:,} x 50", f"{seconds:.1f}", f"{args.cells / seconds:,.0f}",
             f"{peak_gib():.2f} (was {before:.2f})"]]
    del moved, cells

    adata = synthetic_atlas(args.cells)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "atlas.h5ad"
        adata.write_h5ad(path)
        x_bytes = adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes
        for mode in ("in memory", "backed"):
            data = adata if mode == "in memory" else ad.read_h5ad(path, backed="r")
            start = time.perf_counter()
            hs.tl.fit_transport(data, groupby="condition", source="control", target="stimulated",
                                n_iters=args.n_iters, seed=0, device="cpu")
            seconds = time.perf_counter() - start
            rows.append([f"fit_transport {args.cells:,} cells ({mode}, {args.n_iters} it)",
                         f"{seconds:.1f}", "-", f"{peak_gib():.2f}"])
            if mode == "in memory":
                n_control = int((data.obs["condition"] == "control").sum())
                start = time.perf_counter()
                hs.tl.predict(data, target="stimulated")
                seconds = time.perf_counter() - start
                rows.append([f"predict {n_control:,} control cells (AnnData)", f"{seconds:.1f}",
                             f"{n_control / seconds:,.0f}", f"{peak_gib():.2f}"])
        print(f"\nsparse X: {adata.n_obs:,} x {adata.n_vars} ({x_bytes / 2**30:.2f} GiB CSR; "
              f"dense would be {adata.n_obs * adata.n_vars * 4 / 2**30:.1f} GiB)\n")
    print_table(["task", "wall s", "cells / s", "peak RSS GiB (process so far)"], rows)


if __name__ == "__main__":
    main()
