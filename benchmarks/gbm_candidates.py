"""Glioblastoma leave-one-patient-out: every linear candidate of the selection, scored on the new patient.

``TransportMap`` with ``groups`` chooses its linear part (frame x shrinkage γ) by
leave-one-group-out over the training patients. This script asks whether a better choice
exists at all: for each held-out patient it fits every candidate (frames ``global``,
``group``, ``within``; γ in the selection grid; no network) on the other four patients with
the selection's own predictor (``_predict_linear``; equal to ``TransportMap(frame=...,
shrinkage=..., residual=0)`` within 2e-7 relative, checked) and scores it on the held-out patient's treated cells (energy distance, 30 PCs of the training
cells, as ``generalisation.py``), beside the identity, and reports

* the oracle: the best candidate per patient (not available to a user: it looks at the
  held-out treated cells), as a ratio to the better of mean shift and Gaussian map;
* every fixed candidate's ratio on each patient (is one choice good on all five?);
* selection rules a user could run (nested: for each held-out patient, every candidate is
  scored by leave-one-patient-out over the four training patients, then aggregated): the
  mean of per-fold relative scores (the package's rule), their maximum, median, geometric
  mean, and a transductive weighting of the training patients by how close their control
  cells are (energy distance) to the new patient's control cells;
* the frame sets of ``TransportMap(groups=)`` and of ``ConditionalTransportMap`` (whose cells
  are centred on each patient's control mean) under the package's rule, and what adding the
  uncentred frames to the conditional map would do.

Usage::

    NUMBA_NUM_THREADS=1 python benchmarks/gbm_candidates.py
"""

from __future__ import annotations

import numpy as np
from _common import machine, print_table
from generalisation import energy, load_glioblastoma, project

from hycnn_sc.models import GaussianTransportMap
from hycnn_sc.models._selection import (
    FRAMES,
    SHRINKAGE_GRID,
    _predict_linear,
    centre_on_groups,
    fit_linear_in_frame,
    group_means,
)


def candidates_per_patient(nested) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Names of ``TransportMap``'s candidates, and per held-out patient the baselines and every
    candidate's energy (from :func:`nested_scores`)."""
    names = [f"{frame} γ={gamma}" for frame in FRAMES for gamma in SHRINKAGE_GRID]
    return names, {held: own for held, (own, _, _) in nested.items()}


def linear_scores(z, condition, patients, train, test):
    """Energy of every candidate (fitted on patients ``train``) on patient ``test``: the
    frames of ``TransportMap`` and, as ``centred-within``, the frame the conditional map adds
    (the average of per-patient maps fitted on cells centred on each patient's control mean)."""
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
    means = group_means(z[source], patients[source])
    centred = [centre_on_groups(z[rows], patients[rows], means) for rows in (source, target)]
    for gamma in SHRINKAGE_GRID:
        within = fit_linear_in_frame(*centred, "within", gamma, patients[source], patients[target])
        moved = within.transport(control - control.mean(0)) + control.mean(0)
        scores[f"centred-within γ={gamma}"] = energy(moved, observed)
    return scores


def baselines(z, condition, patients, held) -> dict[str, float]:
    """Identity, mean shift and Gaussian map (fitted on the other patients pooled), as
    ``generalisation.py`` scores them."""
    train = patients != held
    source, target = z[train & (condition == "ctrl")], z[train & (condition == "panobinostat")]
    control = z[~train & (condition == "ctrl")]
    observed = z[~train & (condition == "panobinostat")]
    gaussian = GaussianTransportMap(regularization=1e-3).fit(source, target)
    return {"identity": energy(control, observed),
            "mean shift": energy(control + target.mean(0) - source.mean(0), observed),
            "gaussian": energy(gaussian.transport(control), observed)}


RULES = {
    "mean (package)": lambda m, w: m.mean(1),
    "max": lambda m, w: m.max(1),
    "median": lambda m, w: np.median(m, 1),
    "geometric mean": lambda m, w: np.exp(np.log(m).mean(1)),
    "nearest control cells": lambda m, w: m[:, np.argmax(w)],
    "control-similarity weights": lambda m, w: m @ (w / w.sum()),
}
#: Candidate frames of the unconditional map, of the conditional map (context-centred), and of
#: the conditional map if it also had the uncentred ones.
FRAME_SETS = {
    "TransportMap(groups=)": ("global", "group", "within"),
    "ConditionalTransportMap": ("group", "centred-within"),
    "conditional + uncentred frames": ("global", "group", "within", "centred-within"),
}


def nested_scores(seed: int = 0):
    """Per held-out patient: its own candidate scores, the inner leave-one-patient-out scores
    over the four training patients, and the control-cell energy distance to each of them."""
    x, condition, patients = load_glioblastoma()
    out = {}
    for held in sorted(set(patients)):
        z = project(x, patients != held, 30, seed)
        train = sorted(set(patients) - {held})
        inner = [linear_scores(z, condition, patients, [p for p in train if p != q], q)
                 for q in train]
        control = z[(patients == held) & (condition == "ctrl")]
        distance = np.array([energy(control, z[(patients == q) & (condition == "ctrl")])
                             for q in train])
        own = linear_scores(z, condition, patients, train, held)
        out[held] = ({**baselines(z, condition, patients, held), **own}, inner, distance)
    return out


def pick(inner, names, aggregate, weights=None) -> str:
    """The candidate among ``names`` a rule picks (scores relative to each fold's best)."""
    relative = np.array([[fold[n] / min(fold[m] for m in names) for fold in inner]
                         for n in names])
    return names[int(np.argmin(aggregate(relative, weights)))]


def selection_rules(scores, names, nested):
    """Pick and ratio to the better baseline of every rule, per held-out patient."""
    chosen = {rule: {} for rule in RULES}
    for held, (_, inner, distance) in nested.items():
        weights = np.exp(-(distance - distance.min()) / distance.min())
        baseline = min(scores[held]["mean shift"], scores[held]["gaussian"])
        for rule, aggregate in RULES.items():
            name = pick(inner, names, aggregate, weights)
            chosen[rule][held] = (name, scores[held][name] / baseline)
    return chosen


def frame_sets(nested):
    """Energy of the package rule's pick for every frame set, per held-out patient."""
    table = {}
    for label, frames in FRAME_SETS.items():
        for held, (own, inner, _) in nested.items():
            names = [n for n in own if n.split(" ")[0] in frames]
            name = pick(inner, names, RULES["mean (package)"])
            table.setdefault(label, {})[held] = (name, own[name])
    return table


def main() -> None:
    print(f"# glioblastoma: every linear candidate on the held-out patient; {machine()}")
    nested = nested_scores()
    names, scores = candidates_per_patient(nested)
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
    for rule, picks in selection_rules(scores, names, nested).items():
        ratios = [ratio for _, ratio in picks.values()]
        table.append([rule, *(f"{pick} {ratio:.3f}" for pick, ratio in picks.values()),
                      f"{sum(r <= 1.02 for r in ratios)}/{len(ratios)}",
                      f"{sum(r <= 0.99 for r in ratios)}/{len(ratios)}", f"{np.mean(ratios):.3f}"])
    print_table(["rule", *scores, "within 2 %", "better by 1 %", "mean ratio"], table)

    print("\n## frame sets under the package's rule (energy of the pick; ratio to TransportMap's pick)")
    picks = frame_sets(nested)
    reference = picks["TransportMap(groups=)"]
    table = []
    for label, chosen in picks.items():
        ratios = [energy_ / reference[held][1] for held, (_, energy_) in chosen.items()]
        table.append([label, *(f"{name} {energy_:.3f} ({ratio:.3f})" for (name, energy_), ratio
                               in zip(chosen.values(), ratios, strict=True)),
                      f"{np.mean([e for _, e in chosen.values()]):.3f}",
                      f"{sum(r > 1.0 + 1e-9 for r in ratios)}/{len(ratios)}"])
    print_table(["frames", *reference, "mean energy", "worse than TransportMap"], table)


if __name__ == "__main__":
    main()
