"""Gene-space scores (cell-eval's definitions) of HyCNN vs baselines, in a PCA and an scVI latent.

Protocols:

* ``kang``: ``kang_scgen_valid`` (1,975 PBMCs, 7 cell types, control vs IFN-β), an 80/20
  split of each condition per seed; one map for all cell types, scored per cell type (and
  ``all``) with the held-out controls of that type (matched controls).
* ``gbm``: glioblastoma slices x panobinostat (5 patients), leave one patient out: maps
  fitted with the patient as group on four patients, the fifth patient's treated cells
  predicted from its own control cells.

Spaces, fitted per fold on every cell except the held-out perturbed ones (never seen):
``pca`` (30 PCs of log1p(counts per 10k), back-projected to genes) and ``scvi`` (an
``scvi.model.SCVI`` on the counts, 10 latent dimensions; predictions decoded with
``hycnn_sc.tl.decode``, library size and batch of the source control cell). Both are compared
with the measured log1p(counts per 10k) of the held-out cells over all genes.

Methods: ``identity`` (unmoved control), ``mean_shift``, ``gaussian`` (closed-form Gaussian OT
map, ridge 1e-3), ``hycnn`` (the default ``TransportMap``), and the ``floor`` (training
perturbed cells of the same type through the same decoding: what a perfect map would score).
Scores (``hycnn_sc.metrics.gene_space_scores``): differential expression like with like —
decoded predictions against the decoded held-out controls, observed cells against the measured
held-out controls.

kang_scgen_valid ships log1p-normalised values only; its counts are recovered exactly: in
every cell the smallest non-zero ``expm1(x)`` is one count, and all others are integer
multiples of it (checked to 1e-3).

``--cell-eval PYTHON`` also scores the first seed's Kang predictions with cell-eval itself
(run by ``PYTHON``, a separate environment with ``cell-eval==0.8.2``; see
``_cell_eval_score.py``) and prints both sets of scores side by side.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/gene_space.py \\
        [--protocols kang gbm] [--seeds 3] [--n-iters 500] [--epochs 100] \\
        [--cell-eval /tmp/celleval/bin/python]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from _common import machine, print_table
from sklearn.decomposition import PCA

import hycnn_sc as hs
from hycnn_sc.metrics import GENE_SPACE_METRICS, differential_expression, gene_space_scores
from hycnn_sc.models import GaussianTransportMap, TransportMap

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HERE = Path(__file__).resolve().parent
METHODS = ("identity", "mean_shift", "gaussian", "hycnn", "floor")
SHOWN = ("pearson_delta", "overlap_at_N", "overlap_at_50", "de_direction_match", "mae_mean")
#: Metrics compared with cell-eval: ours -> cell-eval's column.
CELL_EVAL_NAMES = {"pearson_delta": "pearson_delta", "mse_mean": "mse", "mae_mean": "mae",
                   "overlap_at_N": "overlap_at_N", "overlap_at_50": "overlap_at_50",
                   "de_direction_match": "de_direction_match"}


def recover_counts(x: sp.csr_matrix) -> sp.csr_matrix:
    """Counts of a log1p-normalised matrix: each row's smallest non-zero expm1 is one count."""
    values = x.tocsr(copy=True).astype(np.float64)
    values.data = np.expm1(values.data)
    unit = np.minimum.reduceat(values.data, values.indptr[:-1])
    counts = values.multiply(1.0 / unit[:, None]).tocsr()
    error = np.abs(counts.data - np.round(counts.data)).max()
    if error > 1e-3:
        raise ValueError(f"Not recoverable as integer counts (max deviation {error:.3g}).")
    counts.data = np.round(counts.data)
    return counts.astype(np.float32)


def normalise(adata: ad.AnnData) -> ad.AnnData:
    """``layers['counts']`` kept; ``X`` = dense log1p(counts per 10k)."""
    counts = adata.layers["counts"]
    totals = np.asarray(counts.sum(axis=1)).ravel()
    adata.X = np.log1p(np.asarray(counts.multiply(1e4 / totals[:, None]).todense(), np.float32))
    return adata


def kang_data() -> ad.AnnData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.read_h5ad(SHARED / "kang_scgen_valid.h5ad")
    adata = ad.AnnData(X=None, obs=adata.obs[["condition", "cell_type"]].copy(),
                       var=pd.DataFrame(index=adata.var_names), layers={
                           "counts": recover_counts(adata.X)})
    adata.obs["group"] = adata.obs["cell_type"].astype(str)
    return normalise(adata)


def gbm_data() -> ad.AnnData:
    adata = hs.datasets.glioblastoma_panobinostat()
    adata = ad.AnnData(X=None, obs=adata.obs[["condition", "patient_id"]].copy(),
                       var=pd.DataFrame(index=adata.var_names),
                       layers={"counts": sp.csr_matrix(adata.X, dtype=np.float32)})
    adata.obs["group"] = adata.obs["patient_id"].astype(str)
    return normalise(adata)


def embed(adata: ad.AnnData, fit_rows: np.ndarray, space: str, seed: int, epochs: int):
    """``(latent of every cell, to_genes(values, source_rows))`` fitted on ``fit_rows``."""
    if space == "pca":
        pca = PCA(30, random_state=seed).fit(adata.X[fit_rows])
        return pca.transform(adata.X).astype(np.float32), lambda v, rows: pca.inverse_transform(v)
    import scvi

    scvi.settings.seed = seed
    train = adata[fit_rows].copy()
    scvi.model.SCVI.setup_anndata(train, layer="counts")
    model = scvi.model.SCVI(train, n_latent=10)
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False, logger=False,
                enable_model_summary=False, enable_checkpointing=False)
    reference = adata.copy()
    scvi.model.SCVI.setup_anndata(reference, layer="counts")
    hs.tl.scvi_latent(reference, scvi_model=model)

    def to_genes(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        cells = ad.AnnData(obs=pd.DataFrame(
            {"source_cell": np.asarray(reference.obs_names[rows])},
            index=[f"p{i}" for i in range(len(rows))]))
        cells.obsm["X_scVI"] = values
        return hs.tl.decode(cells, scvi_model=model, adata=reference).X

    return reference.obsm["X_scVI"], to_genes


def score_fold(adata, held, units, space, seed, args, dataset, fold, export=None):
    """Fit every method on the fold's training cells and score each group; rows of records."""
    source, target = ("control", "stimulated") if dataset == "kang" else ("ctrl", "panobinostat")
    condition = adata.obs["condition"].astype(str).to_numpy()
    group = adata.obs["group"].astype(str).to_numpy()
    fit_rows = ~(held & (condition == target))
    start = time.perf_counter()
    z, to_genes = embed(adata, fit_rows, space, seed, args.epochs)
    embed_seconds = time.perf_counter() - start
    s_train = ~held & (condition == source)
    t_train = ~held & (condition == target)
    s_held = np.flatnonzero(held & (condition == source))
    groups = dict(source_groups=units[s_train], target_groups=units[t_train]) if dataset == "gbm" else {}
    start = time.perf_counter()
    tmap = TransportMap(n_iters=args.n_iters, seed=seed, device="cpu").fit(
        z[s_train], z[t_train], **groups)
    fit_seconds = time.perf_counter() - start
    gaussian = GaussianTransportMap(regularization=1e-3).fit(z[s_train], z[t_train])
    control = z[s_held]
    moved = {
        "identity": control,
        "mean_shift": control + z[t_train].mean(0) - z[s_train].mean(0),
        "gaussian": gaussian.transport(control),
        "hycnn": tmap.transport(control, groups=units[s_held] if dataset == "gbm" else None),
    }
    predicted_genes = {m: to_genes(v.astype(np.float32), s_held) for m, v in moved.items()}
    records = []
    names = ["all"] if dataset == "gbm" else ["all", *sorted(set(group))]
    for name in names:
        pick = np.ones(len(s_held), bool) if name == "all" else group[s_held] == name
        observed_rows = np.flatnonzero(held & (condition == target)
                                       & ((group == name) | (name == "all")))
        if pick.sum() < 3 or len(observed_rows) < 3:
            continue
        measured_control = adata.X[s_held[pick]]
        observed = adata.X[observed_rows]
        control_pred = predicted_genes["identity"][pick]
        obs_de = differential_expression(observed, measured_control)
        candidates = {m: p[pick] for m, p in predicted_genes.items()}
        if dataset == "kang":  # a new patient has no training cells to make a floor of
            floor_rows = np.flatnonzero(t_train & ((group == name) | (name == "all")))
            candidates["floor"] = to_genes(z[floor_rows], floor_rows)
        for method, values in candidates.items():
            scores = gene_space_scores(values, observed, measured_control,
                                       control_pred=control_pred, obs_de=obs_de)
            records.append({"dataset": dataset, "space": space, "seed": seed, "fold": fold,
                            "group": name if dataset == "kang" else fold, "method": method,
                            **scores})
            if export is not None and method != "floor":
                _export(export, f"{space}_{name}_{method}", values, control_pred, observed,
                        measured_control, adata.var_names)
    print(f"  {dataset} {space} seed {seed} fold {fold}: embedding {embed_seconds:.0f} s, "
          f"map {fit_seconds:.0f} s (γ={tmap.shrinkage_:g}, λ={tmap.residual_weight_:g}, "
          f"frame {tmap.frame_})", flush=True)
    return records


def _export(folder: Path, name: str, predicted, control_pred, observed, control, genes) -> None:
    """The real/pred AnnData pair cell-eval scores, like with like (see the module notes).

    cell-eval refuses negative values (PCA back-projections have some): they are set to 0
    here, and the comparison scores these exported files with both implementations.
    """
    for kind, (perturbed, controls) in (("pred", (np.maximum(predicted, 0),
                                                  np.maximum(control_pred, 0))),
                                        ("real", (observed, control))):
        labels = ["stimulated"] * len(perturbed) + ["control"] * len(controls)
        pair = ad.AnnData(
            X=np.vstack([perturbed, controls]).astype(np.float32),
            obs=pd.DataFrame({"target": labels}, index=[f"c{i}" for i in range(len(labels))]),
            var=pd.DataFrame(index=np.asarray(genes)),
        )
        pair.write_h5ad(folder / f"{name}.{kind}.h5ad")


def kang(args, export):
    adata = kang_data()
    condition = adata.obs["condition"].astype(str).to_numpy()
    records = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        held = np.zeros(adata.n_obs, bool)
        for label in ("control", "stimulated"):
            idx = np.flatnonzero(condition == label)
            held[rng.choice(idx, round(0.2 * len(idx)), replace=False)] = True
        for space in args.spaces:
            records += score_fold(adata, held, np.zeros(adata.n_obs), space, seed, args, "kang",
                                  f"seed{seed}", export if seed == args.seeds[0] else None)
    return records


def gbm(args, export):
    adata = gbm_data()
    patients = adata.obs["patient_id"].astype(str).to_numpy()
    records = []
    for seed in args.seeds[:1]:  # leave-one-patient-out: the folds are the replicates
        for patient in sorted(set(patients)):
            for space in args.spaces:
                records += score_fold(adata, patients == patient, patients, space, seed, args,
                                      "gbm", patient)
    return records


def report(table: pd.DataFrame) -> None:
    for (dataset, space), part in table.groupby(["dataset", "space"], sort=False):
        print(f"\n## {dataset}, {space}: mean over {'seeds' if dataset == 'kang' else 'patients'} "
              "(± sd), per group")
        for metric in SHOWN:
            stats = part.groupby(["group", "method"])[metric].agg(["mean", "std"])
            rows = []
            for group in sorted(set(part["group"]), key=lambda g: (g != "all", g)):
                cells = []
                for method in METHODS:
                    mean, sd = (stats.loc[(group, method)] if (group, method) in stats.index
                                else (np.nan, np.nan))
                    cells.append("nan" if not np.isfinite(mean) else
                                 f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else ""))
                rows.append([group, *cells])
            print(f"\n{metric}")
            print_table(["group", *METHODS], rows)
    print("\n## Summary: mean over groups (cell types incl. 'all' / patients) and seeds")
    rows = []
    for (dataset, space, method), part in table.groupby(["dataset", "space", "method"], sort=False):
        rows.append([dataset, space, method, *(f"{part[m].mean():.3f}" for m in SHOWN)])
    print_table(["dataset", "space", "method", *SHOWN], rows)


def compare_with_cell_eval(python: str, folder: Path, seed: int) -> None:
    out = folder / "cell_eval.csv"
    subprocess.run([python, str(HERE / "_cell_eval_score.py"), str(folder), str(out)],
                   check=True)
    theirs = pd.read_csv(out)
    records = []
    for name in theirs["name"]:
        pred, real = (ad.read_h5ad(folder / f"{name}.{kind}.h5ad") for kind in ("pred", "real"))
        stimulated = [(x.X[(x.obs["target"] == label).to_numpy()]) for x in (pred, real)
                      for label in ("stimulated", "control")]
        records.append({"name": name, **gene_space_scores(
            stimulated[0], stimulated[2], stimulated[3], control_pred=stimulated[1])})
    ours = pd.DataFrame.from_records(records)
    theirs = theirs.rename(columns={c: f"{c}_cell_eval" for c in theirs.columns if c != "name"})
    merged = ours.merge(theirs, on="name")
    print(f"\n## Agreement with cell-eval 0.8.2 on the same inputs (kang seed {seed}: "
          f"{len(merged)} prediction x cell-type pairs)")
    rows = []
    for ours_name, theirs_name in CELL_EVAL_NAMES.items():
        a = merged[ours_name].to_numpy(float)
        b = merged[f"{theirs_name}_cell_eval"].to_numpy(float)
        both_nan = np.isnan(a) & np.isnan(b)
        finite = np.isfinite(a) & np.isfinite(b)
        equal = both_nan | (finite & np.isclose(a, b, rtol=1e-4, atol=1e-6))
        rows.append([ours_name, theirs_name, f"{equal.sum()}/{len(a)}",
                     f"{np.abs(a[finite] - b[finite]).max():.2e}" if finite.any() else "-",
                     f"{np.mean(a[finite]):.4f}", f"{np.mean(b[finite]):.4f}"])
    print_table(["ours", "cell-eval", "equal", "max |diff|", "mean ours", "mean cell-eval"], rows)
    different = merged[~np.isclose(merged["overlap_at_N"], merged["overlap_at_N_cell_eval"])]
    if len(different):
        print(different[["name", "overlap_at_N", "overlap_at_N_cell_eval"]].to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocols", nargs="+", default=["kang", "gbm"], choices=["kang", "gbm"])
    parser.add_argument("--spaces", nargs="+", default=["pca", "scvi"], choices=["pca", "scvi"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-iters", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=100, help="scVI training epochs")
    parser.add_argument("--cell-eval", default=None, metavar="PYTHON",
                        help="python of an environment with cell-eval==0.8.2")
    args = parser.parse_args()
    args.seeds = list(range(args.seeds))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"# Gene-space scores (cell-eval definitions): {machine()}")
    print(f"# seeds {args.seeds}, TransportMap n_iters={args.n_iters}, scVI {args.epochs} epochs")
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) if args.cell_eval and "kang" in args.protocols else None
        records = []
        for protocol in args.protocols:
            records += {"kang": kang, "gbm": gbm}[protocol](args, export)
        table = pd.DataFrame.from_records(records)
        report(table)
        if export is not None:
            compare_with_cell_eval(args.cell_eval, export, args.seeds[0])
    missing = set(GENE_SPACE_METRICS) - set(table.columns)
    assert not missing, missing


if __name__ == "__main__":
    main()
