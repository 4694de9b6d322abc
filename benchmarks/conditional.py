"""One conditional map for many conditions: combinations, cell-line transfer, in-distribution, patients.

Protocols (energy distance between predicted and observed cells in 30 PCs fitted on the
training cells of each fold, lower is better; baselines fitted on the same training cells):

* ``combinations``: ``perturbseq_devel``, the five K562 doubles whose singles are both measured.
  Each double is left out of training (all lines' other conditions stay in), then predicted
  from K562 controls. Baselines: ``additive`` (control + shift_A + shift_B), ``best_single``
  (control + the shift of the single closer to the observed cells: an oracle choice),
  ``gauss_single`` (the Gaussian map of that single).
* ``transfer``: the nine perturbations measured in all four lines; each left out in one line
  (36 folds; the line's other perturbations stay in), predicted from that line's controls.
  Baselines learned on the other lines, relative to each line's control mean: ``mean_shift``,
  ``gaussian`` (average of the other lines' Gaussian maps) and ``unconditional`` (issue 6's
  ``TransportMap`` with ``groups`` = line, fitted on the other lines).
* ``new_line``: all perturbations of one line left out (only its controls kept); the nine
  shared perturbations predicted from its controls, beside the same baselines.
* ``in_distribution``: all conditions of all lines, 20 % of each condition's cells held out;
  the conditional map beside separate ``TransportMap`` s (one stacked fit), and the wall time
  of one conditional fit against one single map at the same (fixed) iterations.
* ``gbm``: glioblastoma x panobinostat, leave one patient out, the patient as context (a new
  patient is encoded from its own control cells) beside mean shift, Gaussian map and issue
  6's ``TransportMap`` with ``groups`` = patient.

``floor``: two random halves of the observed cells (sampling noise; inflated by the
V-statistic's bias at half size). ``ratio``: conditional / the better linear baseline
(``additive`` for combinations). ``cond − best single (SE)``: the conditional map's energy
minus the better single's, with the paired bootstrap standard error over the same cells.

    NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/conditional.py \
        [--protocols combinations transfer in_distribution gbm] [--seeds 0] [--n-iters auto]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
from _common import machine, print_table
from generalisation import PERTURBATIONS, energy, floor, load_glioblastoma, project

from hycnn_sc.models import ConditionalTransportMap, GaussianTransportMap, TransportMap
from hycnn_sc.models._selection import paired_energy

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Held-out lines of the transfer protocol (all when empty; --lines splits a run in two).
ONLY_LINES: list[str] = []
#: Extra ConditionalTransportMap arguments (``--params``), e.g. ``{"inner_steps": 2}``.
EXTRA: dict = {}
#: Iterations of the in-distribution wall-time comparison (``--timing-iters``).
TIMING_ITERS = [1000]
DOUBLES = ("MAP2K3+MAP2K6", "KLF1+MAP2K6", "KLF1+TGFBR2", "MAPK1+TGFBR2", "MAP2K3+SLC38A2")


def perturbseq():
    adata = ad.read_h5ad(SHARED / "perturbseq_devel.h5ad")
    return (adata.X.toarray(), adata.obs["condition"].astype(str).to_numpy(),
            adata.obs["cell_type"].astype(str).to_numpy())


def conditional_fit(z, condition, context, rows, control, n_iters, seed, min_cells=4):
    """One ConditionalTransportMap on every (perturbation, context) pair within ``rows``."""
    sources, targets, perts, contexts = [], [], [], []
    controls = {}
    for line in np.unique(context[rows]):
        source = rows & (condition == control) & (context == line)
        if source.sum() < min_cells:
            continue
        controls[line] = z[source]
        for label in np.unique(condition[rows & (context == line)]):
            target = rows & (condition == label) & (context == line)
            if label == control or target.sum() < min_cells:
                continue
            sources.append(controls[line])
            targets.append(z[target])
            perts.append(label)
            contexts.append((line,))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cmap = ConditionalTransportMap(n_iters=n_iters, seed=seed, device="cpu", **EXTRA).fit(
            sources, targets, perts, contexts=contexts)
    cmap.raw_pairs_ = list(zip(perts, [c[0] for c in contexts], strict=True))
    return cmap, time.perf_counter() - start


def network_alone(cmap, control, pert, context):
    """The conditional network's own prediction (``λ = 1``), whatever the selection chose."""
    chosen = cmap.residual_weight_, cmap.residual_transfer_
    cmap.residual_weight_ = cmap.residual_transfer_ = 1.0
    try:
        return cmap.transport(control, pert, context=context)
    finally:
        cmap.residual_weight_, cmap.residual_transfer_ = chosen


def weights(cmap) -> str:
    """``λ`` of seen conditions / ``λ`` of transfers (chosen on withheld conditions)."""
    return f"{cmap.residual_weight_:g}/{cmap.residual_transfer_:g}"


def budget(cmap) -> str:
    """Iterations the conditional network trained (its held-out rule, with n_iters="auto")
    and the iteration of the kept weights (0: the warm start)."""
    return f"{len(cmap.history_['loss_f'])} ({cmap.best_iteration_})"


def gaussian(source, target, query):
    return GaussianTransportMap(regularization=1e-3).fit(source, target).transport(query)


def other_lines_baselines(z, condition, line, pert, others, control):
    """Mean shift and Gaussian map of ``pert`` learned on ``others`` relative to each line's
    control mean: the shift, and the averaged Gaussian maps applied to ``control``."""
    means = {o: z[(line == o) & (condition == "control")].mean(0) for o in others}
    shift = np.mean([z[(line == o) & (condition == pert)].mean(0) - means[o] for o in others], 0)
    maps = [GaussianTransportMap(regularization=1e-3).fit(
        z[(line == o) & (condition == "control")] - means[o],
        z[(line == o) & (condition == pert)] - means[o]) for o in others]
    centre = control.mean(0)
    return shift, centre + np.mean([m.transport(control - centre) for m in maps], 0)


def verdict(ratio: float) -> str:
    return "win" if ratio <= 0.99 else "tie" if ratio <= 1.02 else "LOSS"


def combinations(seeds, n_iters):
    x, condition, line = perturbseq()
    header = ["double", "seed", "identity", "additive", "best_single", "gauss_single",
              "conditional", "network", "floor", "ratio", "cond − best single (SE)", "λ/λt",
              "iters (best)", "linear", "fit s"]
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for double in DOUBLES:
            held = (condition == double) & (line == "k562")
            train = ~held
            z = project(x, train, 30, seed)
            k562 = line == "k562"
            control = z[train & k562 & (condition == "control")]
            observed = z[held]
            cmap, seconds = conditional_fit(z, condition, line, train, "control", n_iters, seed)
            predicted = cmap.transport(control, double, context=("k562",))
            singles = double.split("+")
            shifts = {s: z[k562 & (condition == s)].mean(0) - control.mean(0) for s in singles}
            scores = {"identity": energy(control, observed),
                      "additive": energy(control + sum(shifts.values()), observed)}
            single_scores = {s: energy(control + shifts[s], observed) for s in singles}
            best = min(single_scores, key=single_scores.get)
            scores["best_single"] = single_scores[best]
            scores["gauss_single"] = energy(gaussian(control, z[k562 & (condition == best)], control), observed)
            scores["conditional"] = energy(predicted, observed)
            scores["network"] = energy(network_alone(cmap, control, double, ("k562",)), observed)
            ratio = scores["conditional"] / scores["additive"]
            noise = floor(observed, rng)
            # paired bootstrap over the same control and observed cells: is the gap to the
            # (oracle) better single beyond the sampling noise of the held-out double?
            paired = paired_energy({"conditional": predicted, "best_single": control + shifts[best]},
                                   observed, reference="best_single",
                                   rng=np.random.default_rng([seed, 1]))  # floors stay as before
            gap = paired.energy["conditional"] - paired.energy["best_single"]
            rows.append([double, seed, *(f"{scores[k]:.3f}" for k in
                                         ("identity", "additive", "best_single", "gauss_single",
                                          "conditional", "network")),
                         f"{noise:.3f}", f"{ratio:.3f} {verdict(ratio)}",
                         f"{gap:+.3f} ({paired.standard_error['conditional']:.3f})",
                         weights(cmap), budget(cmap), cmap.at(double, ("k562",)).linear_kind_,
                         f"{seconds:.0f}"])
    print("## combinations: K562 doubles left out, predicted from K562 controls (30 PCs)")
    print_table(header, rows)


def transfer(seeds, n_iters):
    x, condition, line = perturbseq()
    lines = sorted(set(line))
    header = ["fold", "seed", "identity", "mean_shift", "gaussian", "unconditional",
              "conditional", "network", "floor", "ratio", "λ/λt", "iters (best)", "fit s"]
    rows, ratios, beats_unconditional = [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for held_line in [line_ for line_ in lines if not ONLY_LINES or line_ in ONLY_LINES]:
            for pert in PERTURBATIONS:
                held = (condition == pert) & (line == held_line)
                train = ~held
                z = project(x, train, 30, seed)
                control = z[(line == held_line) & (condition == "control")]
                observed = z[held]
                cmap, seconds = conditional_fit(z, condition, line, train, "control", n_iters, seed)
                predicted = cmap.transport(control, pert, context=(held_line,))
                others = [o for o in lines if o != held_line]
                shift, gauss = other_lines_baselines(z, condition, line, pert, others, control)
                source_rows = (line != held_line) & (condition == "control")
                target_rows = (line != held_line) & (condition == pert)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tmap = TransportMap(n_iters=n_iters, seed=seed, device="cpu").fit(
                        z[source_rows], z[target_rows], source_groups=line[source_rows],
                        target_groups=line[target_rows])
                scores = {"identity": energy(control, observed),
                          "mean_shift": energy(control + shift, observed),
                          "gaussian": energy(gauss, observed),
                          "unconditional": energy(tmap.transport(control, groups=np.full(len(control), held_line)), observed),
                          "conditional": energy(predicted, observed),
                          "network": energy(network_alone(cmap, control, pert, (held_line,)), observed)}
                ratio = scores["conditional"] / min(scores["mean_shift"], scores["gaussian"])
                ratios.append(ratio)
                beats_unconditional.append(scores["conditional"] < scores["unconditional"])
                rows.append([f"{held_line}:{pert}", seed, *(f"{scores[k]:.3f}" for k in
                             ("identity", "mean_shift", "gaussian", "unconditional", "conditional",
                              "network")),
                             f"{floor(observed, rng):.3f}", f"{ratio:.3f} {verdict(ratio)}",
                             weights(cmap), budget(cmap), f"{seconds:.0f}"])
    print("## transfer: a perturbation left out in one cell line, predicted from that line's controls")
    print_table(header, rows)
    ratios = np.asarray(ratios)
    print(f"\ntransfer: {len(ratios)} folds; conditional beats both linear baselines (ratio < 1) on "
          f"{(ratios < 1).mean():.0%}, within 2 % on {(ratios <= 1.02).mean():.0%}; beats the "
          f"unconditional map on {np.mean(beats_unconditional):.0%}; mean ratio {ratios.mean():.3f}\n")


def new_line(seeds, n_iters):
    """All of one line's perturbations left out (its controls kept), the nine shared ones predicted."""
    x, condition, line = perturbseq()
    header = ["fold", "seed", "identity", "mean_shift", "gaussian", "unconditional",
              "conditional", "network", "floor", "ratio", "λ/λt", "iters (best)", "fit s"]
    rows, ratios = [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for held_line in sorted(set(line)):
            held = (line == held_line) & (condition != "control")
            train = ~held
            z = project(x, train, 30, seed)
            control = z[(line == held_line) & (condition == "control")]
            cmap, seconds = conditional_fit(z, condition, line, train, "control", n_iters, seed)
            others = [o for o in sorted(set(line)) if o != held_line]
            source_rows = (line != held_line) & (condition == "control")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                maps = TransportMap.fit_many(
                    [z[source_rows]] * len(PERTURBATIONS),
                    [z[(line != held_line) & (condition == p)] for p in PERTURBATIONS],
                    source_groups=[line[source_rows]] * len(PERTURBATIONS),
                    target_groups=[line[(line != held_line) & (condition == p)] for p in PERTURBATIONS],
                    n_iters=n_iters, seed=seed, device="cpu")
            for pert, tmap in zip(PERTURBATIONS, maps, strict=True):
                observed = z[held & (condition == pert)]
                shift, gauss = other_lines_baselines(z, condition, line, pert, others, control)
                scores = {"identity": energy(control, observed),
                          "mean_shift": energy(control + shift, observed),
                          "gaussian": energy(gauss, observed),
                          "unconditional": energy(tmap.transport(control, groups=np.full(len(control), held_line)), observed),
                          "conditional": energy(cmap.transport(control, pert, context=(held_line,)), observed),
                          "network": energy(network_alone(cmap, control, pert, (held_line,)), observed)}
                ratio = scores["conditional"] / min(scores["mean_shift"], scores["gaussian"])
                ratios.append(ratio)
                rows.append([f"{held_line}:{pert}", seed, *(f"{scores[k]:.3f}" for k in
                             ("identity", "mean_shift", "gaussian", "unconditional", "conditional",
                              "network")),
                             f"{floor(observed, rng):.3f}", f"{ratio:.3f} {verdict(ratio)}",
                             weights(cmap), budget(cmap), f"{seconds:.0f}"])
    print("## new_line: all perturbations of one line left out, predicted from its controls")
    print_table(header, rows)
    ratios = np.asarray(ratios)
    print(f"\nnew_line: {len(ratios)} folds; conditional beats both linear baselines on "
          f"{(ratios < 1).mean():.0%}, within 2 % on {(ratios <= 1.02).mean():.0%}; mean ratio "
          f"{ratios.mean():.3f}\n")


def in_distribution(seeds, n_iters):
    x, condition, line = perturbseq()
    header = ["seed", "pairs", "separate (mean)", "conditional (mean)", "relative", "λ/λt", "iters (best)",
              "network (mean)", "floor (mean)",
              "separate fit s", "single map s", "conditional s", "cond / single"]
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        held = rng.random(len(condition)) < 0.2
        train = ~held
        z = project(x, train, 30, seed)
        cmap, cond_seconds = conditional_fit(z, condition, line, train, "control", n_iters, seed)
        if n_iters != TIMING_ITERS[0]:  # the wall-time ratio compares equal iterations
            _, cond_seconds = conditional_fit(z, condition, line, train, "control",
                                              TIMING_ITERS[0], seed)
        pairs = cmap.raw_pairs_
        sources = {lin: z[train & (line == lin) & (condition == "control")] for lin in set(line)}
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = TransportMap.fit_many(
                [sources[lin] for _, lin in pairs],
                [z[train & (line == lin) & (condition == p)] for p, lin in pairs],
                n_iters=n_iters, seed=seed, device="cpu")
        separate_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TransportMap(n_iters=TIMING_ITERS[0], seed=seed, device="cpu", residual=1.0).fit(
                sources["k562"], z[train & (line == "k562") & (condition == "KLF1")])
        single_seconds = time.perf_counter() - start
        separate, conditional, network, floors = [], [], [], []
        for (pert, lin), tmap in zip(pairs, maps, strict=True):
            control = z[held & (line == lin) & (condition == "control")]
            observed = z[held & (line == lin) & (condition == pert)]
            if len(observed) < 4 or len(control) < 10:
                continue
            separate.append(energy(tmap.transport(control), observed))
            conditional.append(energy(cmap.transport(control, pert, context=(lin,)), observed))
            network.append(energy(network_alone(cmap, control, pert, (lin,)), observed))
            floors.append(energy(z[train & (line == lin) & (condition == pert)], observed))
        rows.append([seed, len(separate), f"{np.mean(separate):.3f}", f"{np.mean(conditional):.3f}",
                     f"{np.mean(conditional) / np.mean(separate):.3f}", weights(cmap), budget(cmap),
                     f"{np.mean(network):.3f}", f"{np.mean(floors):.3f}",
                     f"{separate_seconds:.0f}", f"{single_seconds:.0f}", f"{cond_seconds:.0f}",
                     f"{cond_seconds / single_seconds:.2f}"])
    print(f"## in_distribution: every (perturbation, line), 20 % of cells held out; energies at "
          f"n_iters={n_iters}, wall times of one fit each at n_iters={TIMING_ITERS[0]}")
    print_table(header, rows)


def gbm(seeds, n_iters):
    x, condition, patients = load_glioblastoma()
    header = ["patient", "seed", "identity", "mean_shift", "gaussian", "unconditional",
              "conditional", "network", "floor", "ratio", "λ/λt", "iters (best)", "fit s"]
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for held in sorted(set(patients)):
            train = patients != held
            z = project(x, train, 30, seed)
            control = z[~train & (condition == "ctrl")]
            observed = z[~train & (condition == "panobinostat")]
            cmap, seconds = conditional_fit(z, condition, patients, train, "ctrl", n_iters, seed)
            predicted = cmap.transport(control, "panobinostat", context=(held,))
            source_rows, target_rows = train & (condition == "ctrl"), train & (condition == "panobinostat")
            shift = z[target_rows].mean(0) - z[source_rows].mean(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tmap = TransportMap(n_iters=n_iters, seed=seed, device="cpu").fit(
                    z[source_rows], z[target_rows], source_groups=patients[source_rows],
                    target_groups=patients[target_rows])
            scores = {"identity": energy(control, observed),
                      "mean_shift": energy(control + shift, observed),
                      "gaussian": energy(gaussian(z[source_rows], z[target_rows], control), observed),
                      "unconditional": energy(tmap.transport(control, groups=np.full(len(control), held)), observed),
                      "conditional": energy(predicted, observed),
                      "network": energy(network_alone(cmap, control, "panobinostat", (held,)), observed)}
            ratio = scores["conditional"] / scores["unconditional"]
            rows.append([held, seed, *(f"{scores[k]:.3f}" for k in
                         ("identity", "mean_shift", "gaussian", "unconditional", "conditional",
                          "network")),
                         f"{floor(observed, rng):.3f}", f"{ratio:.3f} {verdict(ratio)}",
                         weights(cmap), budget(cmap), f"{seconds:.0f}"])
    print("## gbm: leave one patient out, patient as context (ratio: conditional / unconditional)")
    print_table(header, rows)


PROTOCOLS = {"combinations": combinations, "transfer": transfer, "new_line": new_line,
             "in_distribution": in_distribution, "gbm": gbm}


def iterations(value: str) -> int | str:
    return value if value == "auto" else int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--n-iters", type=iterations, default="auto",
                        help="n_iters of every fit (default: 'auto', the estimators' default)")
    parser.add_argument("--timing-iters", type=int, default=1000,
                        help="in_distribution: iterations of the wall-time comparison")
    parser.add_argument("--lines", nargs="*", default=[],
                        help="transfer: only these held-out lines (to split a run over processes)")
    parser.add_argument("--transfer-n-iters", type=iterations, default=None,
                        help="n_iters of the 36 transfer folds (default: --n-iters)")
    parser.add_argument("--params", default="{}",
                        help="JSON of extra ConditionalTransportMap arguments")
    args = parser.parse_args()
    ONLY_LINES.extend(args.lines)
    EXTRA.update(json.loads(args.params))
    TIMING_ITERS[0] = args.timing_iters
    print(f"# conditional maps — {machine()}; n_iters={args.n_iters}, seeds={args.seeds}, "
          f"extra arguments {EXTRA}\n")
    for name in args.protocols:
        n_iters = args.transfer_n_iters if name == "transfer" and args.transfer_n_iters else args.n_iters
        PROTOCOLS[name](args.seeds, n_iters)


if __name__ == "__main__":
    main()
