"""Gene-space metrics (hycnn_sc.metrics._gene_space) follow cell-eval's definitions.

The reference numbers below were computed by cell-eval 0.8.2 itself
(``MetricsEvaluator(...).compute()``, default settings) on the same generated data, in a
separate environment (cell-eval is not a dependency); ``benchmarks/gene_space.py
--cell-eval`` repeats the comparison on real predictions.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from hycnn_sc.metrics import (
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

#: cell-eval 0.8.2 on ``_data()`` (pred: predicted + control_pred; real: observed + control).
CELL_EVAL = {"pearson_delta": 0.6768583059310913, "mse_mean": 0.29014575481414795,
             "mae_mean": 0.24868141114711761, "overlap_at_N": 0.92, "overlap_at_50": 0.92,
             "de_direction_match": 0.8, "n_de_observed": 25.0, "n_de_predicted": 31.0}


def _data():
    """Poisson counts, log1p: 15 genes up and 10 down in the observed cells; the prediction
    gets 10 of the down genes wrong (up instead)."""
    rng = np.random.default_rng(42)
    n_genes = 60
    lam = rng.uniform(0.2, 6.0, n_genes)
    fold = np.ones(n_genes)
    fold[:15] = rng.uniform(2.5, 5.0, 15)
    fold[15:25] = rng.uniform(0.1, 0.4, 10)
    fold_pred = fold.copy()
    fold_pred[20:30] = rng.uniform(1.5, 3.0, 10)
    control = np.log1p(rng.poisson(lam, (70, n_genes)))
    observed = np.log1p(rng.poisson(lam * fold, (60, n_genes)))
    control_pred = np.log1p(rng.poisson(lam, (65, n_genes)) * 1.0)
    predicted = np.log1p(rng.poisson(lam * fold_pred, (55, n_genes)))
    return predicted, observed, control, control_pred


def test_scores_agree_with_cell_eval():
    predicted, observed, control, control_pred = _data()
    scores = gene_space_scores(predicted, observed, control, control_pred=control_pred)
    assert list(scores) == list(GENE_SPACE_METRICS)
    for name, expected in CELL_EVAL.items():
        # cell-eval keeps means in float32: agreement to float32 precision.
        assert scores[name] == pytest.approx(expected, rel=1e-6), name


def test_mean_profile_metrics_by_hand():
    predicted, observed, control, control_pred = _data()
    delta_pred = predicted.mean(0) - control_pred.mean(0)
    delta_obs = observed.mean(0) - control.mean(0)
    assert pearson_delta(predicted, observed, control, control_pred=control_pred) == (
        pytest.approx(np.corrcoef(delta_pred, delta_obs)[0, 1]))
    # Without control_pred, the measured controls serve both sides.
    assert pearson_delta(predicted, observed, control) == pytest.approx(
        np.corrcoef(predicted.mean(0) - control.mean(0), delta_obs)[0, 1])
    difference = predicted.mean(0) - observed.mean(0)
    assert mse_mean(predicted, observed) == pytest.approx(np.mean(difference**2))
    assert mae_mean(sp.csr_matrix(predicted), observed) == pytest.approx(np.mean(np.abs(difference)))


def test_differential_expression_is_mann_whitney_with_bh():
    _, observed, control, _ = _data()
    result = differential_expression(sp.csr_matrix(observed), control)
    for gene in (0, 17, 40):
        expected = stats.mannwhitneyu(observed[:, gene], control[:, gene], use_continuity=True,
                                      alternative="two-sided", method="asymptotic").pvalue
        assert result.p_value[gene] == pytest.approx(expected)
    np.testing.assert_allclose(result.fdr, stats.false_discovery_control(result.p_value))
    ratio = np.expm1(observed.mean(0)) / np.expm1(control.mean(0))
    np.testing.assert_allclose(result.log2_fold_change, np.log2(ratio))
    assert (result.fdr[:15] < 0.05).all() and (result.log2_fold_change[:15] > 0).all()


def test_differential_expression_edge_genes():
    group = np.zeros((5, 3))
    reference = np.zeros((6, 3))
    group[:, 1] = np.log1p(2.0)
    reference[:, 2] = np.log1p(3.0)
    result = differential_expression(group, reference)
    # All zero on both sides: no change and no evidence; one-sided zeros: ±inf fold change.
    assert result.log2_fold_change[0] == 0.0 and result.p_value[0] == 1.0
    assert result.log2_fold_change[1] == np.inf and result.log2_fold_change[2] == -np.inf


def _de(lfc, fdr):
    return DifferentialExpression(np.asarray(lfc, float), np.zeros(len(lfc)), np.asarray(fdr, float))


def test_de_overlap_ranks_significant_genes_by_absolute_fold_change():
    observed = _de([3.0, -2.0, 1.0, 0.1, 5.0], [0.01, 0.01, 0.01, 0.5, 0.2])
    predicted = _de([2.0, 0.5, 1.0, 4.0, 9.0], [0.01, 0.01, 0.01, 0.01, 0.9])
    # Observed significant, by |lfc|: 0, 1, 2; predicted: 3, 0, 2 (4 is not significant).
    assert de_overlap(predicted, observed) == pytest.approx(2 / 3)
    assert de_overlap(predicted, observed, k=1) == 0.0
    assert de_overlap(predicted, observed, k=50) == pytest.approx(2 / 3)  # k capped at 3
    nothing = _de([1.0, 2.0, 3.0, 4.0, 5.0], [0.5] * 5)
    assert de_overlap(predicted, nothing) == 0.0  # cell-eval's convention
    assert np.isnan(de_direction_match(predicted, nothing))
    # Direction: observed significant 0 (+), 1 (-), 2 (+); predicted +, +, +.
    assert de_direction_match(predicted, observed) == pytest.approx(2 / 3)


def test_gene_space_metrics_refuse_bad_input():
    predicted, observed, control, _ = _data()
    with pytest.raises(ValueError, match="other inputs have 59"):
        pearson_delta(predicted[:, 1:], observed, control)
    with pytest.raises(ValueError, match="NaN"):
        mse_mean(np.full((3, 60), np.nan), observed)
    with pytest.raises(ValueError, match="2-D"):
        differential_expression(observed[0], control)
    with pytest.raises(ValueError, match="k must be"):
        de_overlap(_de([1.0], [0.01]), _de([1.0], [0.01]), k=0)
    with pytest.raises(ValueError, match="same genes"):
        de_overlap(_de([1.0, 2.0], [0.01, 0.01]), _de([1.0], [0.01]))
    with pytest.raises(TypeError, match="DifferentialExpression"):
        de_direction_match({"fdr": [0.01]}, _de([1.0], [0.01]))
