"""Does the default map generalise? One table per protocol, per fold and seed, baselines beside.

Protocols (energy distance between predicted and observed held-out cells, lower is better):

* ``gbm``: glioblastoma slices x panobinostat (Zhao 2021), leave one patient out: fit on four
  patients (``groups`` = patient), predict the fifth patient's treated cells from its controls.
* ``kang_type``: ``kang_scgen_valid``, leave one cell type out (scGen's protocol): that type's
  stimulated cells are never seen; predict them from its control cells (``groups`` = type).
* ``perturbseq_line``: ``perturbseq_devel``, the nine perturbations measured in all four cell
  lines; fit on three lines (one stacked fit of nine maps, ``groups`` = line), predict the
  fourth line's perturbed cells from its controls.
* ``kang_demo``: shipped Kang 832 cells, in distribution: 80/20 split of each condition.
* ``gaussian``: a linear truth, two Gaussians with random full covariances (d = 16, 64;
  5,000 points each); L2-UVP (%) of the fitted map against the closed-form truth.

PCA is fitted on the training cells of each fold only; held-out cells are projected with it.
Baselines are fitted on the same training cells: ``mean_shift`` (control + difference of
means), ``gaussian`` (closed-form Gaussian OT map, ridge 1e-3). ``floor`` is sampling noise:
in distribution, training target cells vs the observed held-out ones; for a new group, two
random halves of its observed cells (inflated by the V-statistic's bias at half size). ``ratio`` is the model's
energy over the better of mean shift and Gaussian map; ``win`` marks ratio <= 0.99, ``tie``
ratio <= 1.02. The model columns say what the selection chose: frame, shrinkage ``γ``
(0 Gaussian ... 1 mean shift) and residual weight ``λ`` of the network.

    NUMBA_NUM_THREADS=1 python benchmarks/generalisation.py [--protocols gbm kang_type ...]
        [--seeds 1] [--n-iters 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from _common import machine, print_table
from sklearn.decomposition import PCA

import hycnn_sc as hs
from hycnn_sc.metrics import energy_distance
from hycnn_sc.models import GaussianTransportMap, TransportMap, gaussian_transport_matrix

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PERTURBATIONS = ("MAP2K3", "MAP2K6", "MAP3K21", "MAP4K3", "MAP4K5", "MAPK1", "PLK4", "SGK1",
                 "TGFBR2")
HEADER = ["fold", "seed", "identity", "mean_shift", "gaussian", "model", "floor", "ratio",
          "frame", "γ", "λ", "fit s"]


def energy(a: np.ndarray, b: np.ndarray) -> float:
    return float(energy_distance(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def floor(observed: np.ndarray, rng: np.random.Generator, reference=None) -> float:
    """Sampling noise: training target cells (as many as the predictions) vs the observed ones,
    or, for a new group (no training cells of it), two random halves of the observed cells
    (half-size samples: inflated by the V-statistic's O(1/n) bias)."""
    if reference is not None:
        rows = rng.choice(len(reference), min(len(reference), len(observed)), replace=False)
        return energy(reference[rows], observed)
    order = rng.permutation(len(observed))
    half = len(order) // 2
    return energy(observed[order[:half]], observed[order[half:]])


def fold_row(name, seed, source_train, target_train, held_source, observed, tmap, predicted,
             seconds, rng, in_distribution=False) -> tuple[list[str], float]:
    shift = held_source + target_train.mean(0) - source_train.mean(0)
    gaussian = GaussianTransportMap(regularization=1e-3).fit(source_train, target_train)
    scores = {
        "identity": energy(held_source, observed),
        "mean_shift": energy(shift, observed),
        "gaussian": energy(gaussian.transport(held_source), observed),
        "model": energy(predicted, observed),
    }
    ratio = scores["model"] / min(scores["mean_shift"], scores["gaussian"])
    verdict = "win" if ratio <= 0.99 else "tie" if ratio <= 1.02 else "LOSS"
    row = [name, seed, *(f"{scores[k]:.3f}" for k in ("identity", "mean_shift", "gaussian", "model")),
           f"{floor(observed, rng, target_train if in_distribution else None):.3f}",
           f"{ratio:.3f} {verdict}", tmap.frame_,
           f"{tmap.shrinkage_:g}", f"{tmap.residual_weight_:g}", f"{seconds:.0f}"]
    return row, ratio


def summary(protocol: str, ratios: list[float]) -> None:
    ratios = np.asarray(ratios)
    print(f"\n{protocol}: {len(ratios)} folds; model within 2 % of the better baseline on "
          f"{(ratios <= 1.02).mean():.0%}, better by >= 1 % on {(ratios <= 0.99).mean():.0%}; "
          f"mean ratio {ratios.mean():.3f}\n")


def project(x: np.ndarray, train: np.ndarray, n_pcs: int, seed: int) -> np.ndarray:
    return PCA(n_pcs, random_state=seed).fit(x[train]).transform(x)


def leave_group_out(protocol, x, condition, group, control, perturbed, folds, n_pcs, seeds,
                    n_iters, keep_heldout_controls_in_pca=False):
    """One fit per held-out group (perturbed may be a list: one stacked fit of all of them)."""
    perturbed = [perturbed] if isinstance(perturbed, str) else list(perturbed)
    rows, ratios = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for held in folds:
            in_held = group == held
            train = ~in_held
            if keep_heldout_controls_in_pca:
                train = train | (in_held & (condition == control))
            z = project(x, train, n_pcs, seed)
            fit_rows = ~in_held
            source_rows = fit_rows & (condition == control)
            pairs = [(p, fit_rows & (condition == p), in_held & (condition == p)) for p in perturbed]
            pairs = [pair for pair in pairs if pair[1].sum() >= 4 and pair[2].sum() >= 4]
            if not pairs:
                continue
            start = time.perf_counter()
            maps = TransportMap.fit_many(
                [z[source_rows]] * len(pairs), [z[t] for _, t, _ in pairs],
                source_groups=[group[source_rows]] * len(pairs),
                target_groups=[group[t] for _, t, _ in pairs],
                n_iters=n_iters, seed=seed, device="cpu",
            )
            seconds = (time.perf_counter() - start) / len(pairs)
            held_source = z[in_held & (condition == control)]
            for (label, target_rows, held_rows), tmap in zip(pairs, maps, strict=True):
                predicted = tmap.transport(held_source, groups=np.full(len(held_source), held))
                name = held if len(perturbed) == 1 else f"{held}:{label}"
                row, ratio = fold_row(name, seed, z[source_rows], z[target_rows], held_source,
                                      z[held_rows], tmap, predicted, seconds, rng)
                rows.append(row)
                ratios.append(ratio)
    print(f"## {protocol}")
    print_table(HEADER, rows)
    summary(protocol, ratios)


def load_glioblastoma() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Glioblastoma x panobinostat, log-normalised: ``(cells x genes, condition, patient)``."""
    adata = ad.read_h5ad(SHARED / "glioblastoma_panobinostat.h5ad")
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return (adata.X.toarray(), adata.obs["condition"].astype(str).to_numpy(),
            adata.obs["patient_id"].astype(str).to_numpy())


def gbm(seeds, n_iters):
    x, condition, patients = load_glioblastoma()
    leave_group_out("gbm: leave one patient out (30 PCs)", x, condition, patients, "ctrl",
                    "panobinostat", sorted(set(patients)), 30, seeds, n_iters)


def kang_type(seeds, n_iters):
    adata = ad.read_h5ad(SHARED / "kang_scgen_valid.h5ad")
    types = adata.obs["cell_type"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    # scGen: the held-out type's control cells are known (they are what is predicted from).
    leave_group_out("kang_type: leave one cell type out (kang_scgen_valid, 50 PCs)",
                    adata.X.toarray(), condition, types, "control", "stimulated",
                    sorted(set(types)), 50, seeds, n_iters, keep_heldout_controls_in_pca=True)


def perturbseq_line(seeds, n_iters):
    adata = ad.read_h5ad(SHARED / "perturbseq_devel.h5ad")
    condition = adata.obs["condition"].astype(str).to_numpy()
    keep = np.isin(condition, ["control", *PERTURBATIONS])
    lines = adata.obs["cell_type"].astype(str).to_numpy()[keep]
    leave_group_out("perturbseq_line: leave one cell line out (9 perturbations, 30 PCs)",
                    adata.X[keep].toarray(), condition[keep], lines, "control", PERTURBATIONS,
                    sorted(set(lines)), 30, seeds, n_iters)


def kang_demo(seeds, n_iters):
    adata = hs.datasets.kang_ifnb1k()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    x = adata[:, adata.var["highly_variable"]].X.toarray()
    condition = adata.obs["condition"].astype(str).to_numpy()
    rows, ratios = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        held = np.zeros(len(x), bool)
        for label in ("control", "stimulated"):
            idx = np.flatnonzero(condition == label)
            held[rng.choice(idx, round(0.2 * len(idx)), replace=False)] = True
        z = project(x, ~held, 30, seed)
        s_train, t_train = z[~held & (condition == "control")], z[~held & (condition == "stimulated")]
        start = time.perf_counter()
        tmap = TransportMap(n_iters=n_iters, seed=seed, device="cpu").fit(s_train, t_train)
        seconds = time.perf_counter() - start
        held_source = z[held & (condition == "control")]
        row, ratio = fold_row("kang832", seed, s_train, t_train, held_source,
                              z[held & (condition == "stimulated")], tmap,
                              tmap.transport(held_source), seconds, rng, in_distribution=True)
        rows.append(row)
        ratios.append(ratio)
    print("## kang_demo: shipped Kang 832 cells, 80/20 split per condition (30 PCs)")
    print_table(HEADER, rows)
    summary("kang_demo", ratios)


def gaussian(seeds, n_iters):
    rows = []
    for d in (16, 64):
        for seed in seeds:
            rng = np.random.default_rng(seed)
            covariances = []
            for _ in range(2):
                q, _ = np.linalg.qr(rng.normal(size=(d, d)))
                covariances.append((q * np.exp(rng.uniform(np.log(0.25), np.log(4), d))) @ q.T)
            means = rng.normal(size=(2, d))
            source = rng.multivariate_normal(means[0], covariances[0], 5000)
            target = rng.multivariate_normal(means[1], covariances[1], 5000)
            test = rng.multivariate_normal(means[0], covariances[0], 5000)
            truth = means[1] + (test - means[0]) @ gaussian_transport_matrix(*covariances)

            def uvp(predicted, truth=truth, covariances=covariances):
                return 100 * np.mean(np.sum((predicted - truth) ** 2, 1)) / np.trace(covariances[1])

            start = time.perf_counter()
            tmap = TransportMap(n_iters=n_iters, seed=seed, device="cpu").fit(source, target)
            seconds = time.perf_counter() - start
            closed = GaussianTransportMap(regularization=1e-3).fit(source, target)
            rows.append([d, seed, f"{uvp(test + target.mean(0) - source.mean(0)):.2f}",
                         f"{uvp(closed.transport(test)):.2f}", f"{uvp(tmap.transport(test)):.2f}",
                         tmap.frame_, f"{tmap.shrinkage_:g}", f"{tmap.residual_weight_:g}",
                         f"{seconds:.0f}"])
    print("## gaussian: linear truth, L2-UVP % (lower is better)")
    print_table(["d", "seed", "mean_shift", "gaussian (sample)", "model", "frame", "γ", "λ",
                 "fit s"], rows)
    print()


PROTOCOLS = {"gbm": gbm, "kang_type": kang_type, "perturbseq_line": perturbseq_line,
             "kang_demo": kang_demo, "gaussian": gaussian}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--n-iters", default="auto",
                        help="'auto' (the project default, held-out-driven) or an integer")
    args = parser.parse_args()
    if args.n_iters != "auto":
        args.n_iters = int(args.n_iters)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # convergence notes, per fold
    print(f"# generalisation benchmark, {args.n_iters} iterations, seeds 0..{args.seeds - 1}; "
          f"{machine()}\n")
    for name in args.protocols:
        PROTOCOLS[name](list(range(args.seeds)), args.n_iters)


if __name__ == "__main__":
    main()
