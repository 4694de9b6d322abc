"""Metrics comparing predicted and observed cell populations.

The distribution and mean-profile metrics accept numpy arrays or torch tensors of shape
``[n_cells, n_features]``. Numpy input returns a Python float (computed in float64); torch
input returns a 0-d tensor on the same device, so the metrics can be used inside a GPU
training loop.

- :func:`energy_distance` and :func:`mmd` compare whole distributions.
- :func:`r2_mean` and :func:`signature_l2` compare mean expression profiles.

Gene-space scores as cell-eval (the Virtual Cell Challenge's suite) defines them, on
log1p-normalised expression (numpy or scipy sparse; Python floats):

- :func:`pearson_delta`, :func:`mse_mean`, :func:`mae_mean` compare mean profiles with
  matched controls;
- :func:`differential_expression` (Wilcoxon rank-sum, Benjamini-Hochberg),
  :func:`de_overlap` (``overlap_at_N``) and :func:`de_direction_match` compare the
  differentially expressed genes;
- :func:`gene_space_scores` computes them all for one prediction.
"""

from ._distances import energy_distance, mmd
from ._expression import r2_mean, signature_l2
from ._gene_space import (
    GENE_SPACE_METRICS,
    DifferentialExpression,
    de_direction_match,
    de_overlap,
    differential_expression,
    gene_space_scores,
    mae_mean,
    mse_mean,
    pearson_delta,
)

__all__ = [
    "GENE_SPACE_METRICS",
    "DifferentialExpression",
    "de_direction_match",
    "de_overlap",
    "differential_expression",
    "energy_distance",
    "gene_space_scores",
    "mae_mean",
    "mmd",
    "mse_mean",
    "pearson_delta",
    "r2_mean",
    "signature_l2",
]
