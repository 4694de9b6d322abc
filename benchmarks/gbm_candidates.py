"""Glioblastoma leave-one-patient-out: every linear candidate of the selection, scored on the new patient.

``TransportMap`` with ``groups`` chooses its linear part (frame x shrinkage γ) by
leave-one-group-out over the training patients. This script asks whether a better choice
exists at all: for each held-out patient it fits every candidate (frames ``global``,
``group``, ``within``; γ in the selection grid; no network) on the other four patients and
scores it on the held-out patient's treated cells (energy distance, 30 PCs of the training
cells, as ``generalisation.py``), beside the identity, and reports

* the oracle: the best candidate per patient (not available to a user: it looks at the
  held-out treated cells), as a ratio to the better of mean shift and Gaussian map;
* every fixed candidate's ratio on each patient (is one choice good on all five?);
* selection rules a user could run (nested: for each held-out patient, every candidate is
  scored by leave-one-patient-out over the four training patients, then aggregated): the
  mean of per-fold relative scores (the package's rule), their maximum, median, geometric
  mean, and a transductive weighting of the training patients by how close their control
  cells are (energy distance) to the new patient's control cells.

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/gbm_candidates.py
"""

from __future__ import annotations

import warnings

import numpy as np
from _common import machine, print_table
from generalisation import energy, load_glioblastoma, project

from hycnn_sc.models import GaussianTransportMap, TransportMap
from hycnn_sc.models._selection import FRAMES, SHRINKAGE_GRID, _predict_linear


def candidates_per_patient(seed: int = 0) -> tuple[list[str], dict[str, dict[str, float]]]:
    x, condition, patients = load_glioblastoma()
    names = [f"{frame} γ={gamma}" for frame in FRAMES for gamma in SHRINKAGE_GRID]
    scores = {}
    for held in sorted(set(patients)):
        in_held = patients == held
        z = project(x, ~in_held, 30, seed)
        source = ~in_held & (condition == "ctrl")
        target = ~in_held & (condition == "panobinostat")
        control = z[in_held & (condition == "ctrl")]
        observed = z[in_held & (condition == "panobinostat")]
        gaussian = GaussianTransportMap(regularization=1e-3).fit(z[source], z[target])
        row = {"identity": energy(control, observed),  # the baselines as generalisation.py's
               "mean shift": energy(control + z[target].mean(0) - z[source].mean(0), observed),
               "gaussian": energy(gaussian.transport(control), observed)}
        for frame in FRAMES:
            for gamma in SHRINKAGE_GRID:
                tmap = TransportMap(frame=frame, shrinkage=gamma, residual=0.0, seed=seed,
                                    device="cpu")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tmap.fit(z[source], z[target], source_groups=patients[source],
                             target_groups=patients[target])
                predicted = tmap.transport(control, groups=np.full(len(control), held))
                row[f"{frame} γ={gamma}"] = energy(predicted, observed)
        scores[held] = row
    return names, scores


def linear_scores(z, condition, patients, train, test):
    """Energy of every candidate (fitted on patients ``train``) on patient ``test``."""
    source = np.isin(patients, train) & (condition == "ctrl")
    target = np.isin(patients, train) & (condition == "panobinostat")
    control = z[(patients == test) & (condition == "ctrl")]
    observed = z[(patients == test) & (condition == "panobinostat")]
    scores = {}
    for frame in FRAMES:
        labels = frame != "global"
        predictions = _predict_linear(z[source], z[target], control, frame, SHRINKAGE_GRID,
                                      patients[source] if labels else None,
                                      patients[target] if labels else None,
                                      control.mean(0) if frame == "group" else None)
        for gamma in SHRINKAGE_GRID:
            scores[f"{frame} γ={gamma}"] = energy(predictions[gamma], observed)
    return scores


RULES = {
    "mean (package)": lambda m, w: m.mean(1),
    "max": lambda m, w: m.max(1),
    "median": lambda m, w: np.median(m, 1),
    "geometric mean": lambda m, w: np.exp(np.log(m).mean(1)),
    "nearest control cells": lambda m, w: m[:, np.argmax(w)],
    "control-similarity weights": lambda m, w: m @ (w / w.sum()),
}


def selection_rules(scores: dict[str, dict[str, float]], names: list[str], seed: int = 0):
    """Ratio to the better baseline of the candidate each rule picks, per held-out patient."""
    x, condition, patients = load_glioblastoma()
    chosen = {rule: {} for rule in RULES}
    for held in scores:
        z = project(x, patients != held, 30, seed)
        train = sorted(set(patients) - {held})
        inner = [linear_scores(z, condition, patients, [p for p in train if p != q], q)
                 for q in train]
        relative = np.array([[fold[n] / min(fold.values()) for fold in inner] for n in names])
        control = z[(patients == held) & (condition == "ctrl")]
        distance = np.array([energy(control, z[(patients == q) & (condition == "ctrl")])
                             for q in train])
        weights = np.exp(-(distance - distance.min()) / distance.min())
        baseline = min(scores[held]["mean shift"], scores[held]["gaussian"])
        for rule, aggregate in RULES.items():
            pick = names[int(np.argmin(aggregate(relative, weights)))]
            chosen[rule][held] = (pick, scores[held][pick] / baseline)
    return chosen


def main() -> None:
    print(f"# glioblastoma: every linear candidate on the held-out patient; {machine()}")
    names, scores = candidates_per_patient()
    rows = []
    for held, row in scores.items():
        baseline = min(row["mean shift"], row["gaussian"])
        best = min(names, key=row.get)
        rows.append([held, f"{row['identity']:.3f}", f"{row['mean shift']:.3f}",
                     f"{row['gaussian']:.3f}", best, f"{row[best]:.3f}",
                     f"{row[best] / baseline:.3f}"])
    print("\n## oracle: the best candidate per held-out patient")
    print_table(["patient", "identity", "mean shift", "gaussian", "best candidate", "energy",
                 "ratio to better baseline"], rows)
    print("\n## each fixed candidate: ratio to the better baseline per patient")
    table = []
    for name in names:
        ratios = [scores[p][name] / min(scores[p]["mean shift"], scores[p]["gaussian"])
                  for p in scores]
        within = sum(r <= 1.02 for r in ratios)
        table.append([name, *(f"{r:.3f}" for r in ratios), f"{within}/{len(ratios)}"])
    print_table(["candidate", *scores, "within 2 %"], table)
    print("\n## selection rules (nested leave-one-patient-out): pick and ratio to the better baseline")
    table = []
    for rule, picks in selection_rules(scores, names).items():
        ratios = [ratio for _, ratio in picks.values()]
        table.append([rule, *(f"{pick} {ratio:.3f}" for pick, ratio in picks.values()),
                      f"{sum(r <= 1.02 for r in ratios)}/{len(ratios)}",
                      f"{sum(r <= 0.99 for r in ratios)}/{len(ratios)}", f"{np.mean(ratios):.3f}"])
    print_table(["rule", *scores, "within 2 %", "better by 1 %", "mean ratio"], table)


if __name__ == "__main__":
    main()
