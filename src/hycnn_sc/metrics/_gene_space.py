r"""Gene-space scores of a predicted perturbation response, as cell-eval defines them.

cell-eval (Arc Institute; the Virtual Cell Challenge's evaluation suite) scores a prediction
per perturbation (and per cell type) from log1p-normalised expression. These functions follow
its definitions (cell-eval 0.8.2, read from its documentation and source; the code here is
written from those definitions):

- :func:`pearson_delta`: Pearson correlation of the predicted and the observed change of
  the mean profile from control, each against its own control cells.
- :func:`mse_mean`, :func:`mae_mean`: squared / absolute error of the mean profiles,
  averaged over genes (cell-eval's ``mse`` and ``mae``).
- :func:`differential_expression`: per gene, the log2 fold change of pseudobulk geometric
  means, ``log2(expm1(mean(x_group)) / expm1(mean(x_reference)))``, and a two-sided
  Mann-Whitney U (Wilcoxon rank-sum) test, normal approximation with tie and continuity
  correction, Benjamini-Hochberg FDR over the genes (what cell-eval computes with ``pdex``).
- :func:`de_overlap`: cell-eval's ``overlap_at_N`` (and ``overlap_at_50`` ...): of the
  observed significant genes (FDR < 0.05) ranked by ``|log2 fold change|``, the fraction of
  the top ``k`` that are also among the top ``k`` predicted significant genes.
- :func:`de_direction_match`: cell-eval's ``de_direction_match``: of the observed significant
  genes, the fraction whose predicted fold change has the same sign.

Inputs are ``[n_cells, n_genes]`` numpy arrays or scipy sparse matrices of log1p-normalised
expression; every function returns a Python float (computed in float64).

Controls must be matched: compare the predicted cells of a cell type with the control cells
of that cell type, and, for a prediction decoded from a latent space or a PCA, with control
cells that went through the same decoding (``control_pred``). Decoded cells are dense and
smooth while measured cells are sparse, so a rank test of decoded cells against measured
controls finds thousands of "significant" genes for any method, even for the unmoved control;
:func:`hycnn_sc.tl.evaluate` therefore compares decoded predictions with decoded controls and
measured perturbed cells with measured controls.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from .._validation import check_array

#: FDR below which a gene counts as differentially expressed (cell-eval's default).
FDR_THRESHOLD = 0.05


def _matrix(value: Any, name: str, n_genes: int | None = None) -> np.ndarray:
    """``value`` as a dense float64 ``[n_cells, n_genes]`` array with at least one cell."""
    return check_array(value, f"`{name}`", n_features=n_genes, reference="the other inputs have",
                       dtype=np.float64)


def _means(*named: tuple[str, Any]) -> list[np.ndarray]:
    """Per-gene means of each named input, after checking they share their genes."""
    first = _matrix(named[0][1], named[0][0])
    means = [first.mean(axis=0)]
    for name, value in named[1:]:
        means.append(_matrix(value, name, first.shape[1]).mean(axis=0))
    return means


def pearson_delta(
    pred: Any, obs: Any, control: Any, *, control_pred: Any | None = None
) -> float:
    r"""Pearson correlation of the predicted and the observed mean change from control.

    .. math::

        r\big(\bar p - \bar c_p,\ \bar o - \bar c\big),

    the correlation over genes of the two mean-profile deltas, with :math:`\bar c_p` the mean
    of ``control_pred`` (the control cells as the prediction represents them) and
    :math:`\bar c` that of ``control``. cell-eval's ``pearson_delta``.

    Parameters
    ----------
    pred, obs
        Predicted and observed perturbed cells, ``[n, genes]`` and ``[m, genes]``.
    control
        The matched control cells (same cell type or stratum), as measured.
    control_pred
        The same control cells as the prediction sees them (e.g. decoded from their latent
        state, or back-projected through the PCA); defaults to ``control``.

    Returns
    -------
    float
        In ``[-1, 1]``; ``nan`` when a delta is constant over genes.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> control = rng.poisson(1.0, size=(50, 20)).astype(float)
    >>> obs = control + np.linspace(0, 2, 20)
    >>> round(pearson_delta(obs, obs, control), 6)
    1.0
    >>> pearson_delta(-obs, obs, control) < 0
    True
    >>> bool(np.isnan(pearson_delta(control, obs, control)))  # no predicted change at all
    True
    """
    mean_pred, mean_obs, mean_control = _means(("pred", pred), ("obs", obs), ("control", control))
    mean_control_pred = (mean_control if control_pred is None
                         else _means(("obs", obs), ("control_pred", control_pred))[1])
    return _pearson(mean_pred - mean_control_pred, mean_obs - mean_control)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator > 0 else float("nan")


def _mean_profile_difference(pred: Any, obs: Any) -> np.ndarray:
    mean_pred, mean_obs = _means(("pred", pred), ("obs", obs))
    return mean_pred - mean_obs


def mse_mean(pred: Any, obs: Any) -> float:
    r"""Mean over genes of the squared difference of mean profiles (cell-eval's ``mse``).

    .. math:: \frac{1}{G} \sum_g (\bar p_g - \bar o_g)^2

    Parameters
    ----------
    pred, obs
        Predicted and observed perturbed cells, ``[n, genes]`` and ``[m, genes]``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> mse_mean(np.array([[2.0, 2.0]]), np.array([[0.0, 0.0], [0.0, 2.0]]))
    2.5
    """
    return float(np.mean(_mean_profile_difference(pred, obs) ** 2))


def mae_mean(pred: Any, obs: Any) -> float:
    r"""As :func:`mse_mean` with absolute differences (cell-eval's ``mae``):
    :math:`\frac{1}{G} \sum_g \lvert \bar p_g - \bar o_g \rvert`.

    Examples
    --------
    >>> import numpy as np
    >>> mae_mean(np.array([[2.0, 2.0]]), np.array([[0.0, 0.0], [0.0, 2.0]]))
    1.5
    """
    return float(np.mean(np.abs(_mean_profile_difference(pred, obs))))


class DifferentialExpression(NamedTuple):
    """Per-gene result of :func:`differential_expression` (arrays of length ``n_genes``)."""

    #: ``log2`` of the ratio of pseudobulk geometric means, group over reference (``±inf``
    #: where one side is all zero, 0 where both are).
    log2_fold_change: np.ndarray
    #: Two-sided Mann-Whitney U p-value (1 for a gene constant over both samples).
    p_value: np.ndarray
    #: Benjamini-Hochberg adjusted p-value over the genes.
    fdr: np.ndarray


def differential_expression(group: Any, reference: Any) -> DifferentialExpression:
    """Differential expression of ``group`` against ``reference``, gene by gene.

    As cell-eval computes it (with ``pdex``, for log1p input): the fold change compares
    pseudobulk geometric means in count space, ``expm1(mean(log1p x))``; the test is the
    two-sided Mann-Whitney U (Wilcoxon rank-sum) test on the cells' values, with the normal
    approximation, tie correction and continuity correction; the FDR is Benjamini-Hochberg over
    all genes. scanpy's ``rank_genes_groups(method="wilcoxon")`` runs the same test without the
    continuity correction (p-values differ in the last digits for large samples).

    Parameters
    ----------
    group, reference
        log1p-normalised expression, ``[n, genes]`` and ``[m, genes]`` (numpy or scipy
        sparse), at least one cell each.

    Returns
    -------
    DifferentialExpression
        ``log2_fold_change``, ``p_value`` and ``fdr``, one entry per gene.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = np.log1p(rng.poisson(2.0, size=(60, 3)))
    >>> group = reference.copy()
    >>> group[:, 0] = np.log1p(rng.poisson(8.0, size=60))
    >>> result = differential_expression(group, reference)
    >>> bool(result.fdr[0] < 0.05), bool(result.log2_fold_change[0] > 1)
    (True, True)
    """
    group = _matrix(group, "group")
    reference = _matrix(reference, "reference", group.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        numerator = np.expm1(group.mean(axis=0))
        denominator = np.expm1(reference.mean(axis=0))
        log2_fold_change = np.log2(numerator / denominator)
    log2_fold_change[(numerator == 0) & (denominator == 0)] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = stats.mannwhitneyu(
            group, reference, axis=0, use_continuity=True, alternative="two-sided",
            method="asymptotic",
        ).pvalue
    # A gene with one value in both samples has no rank information: no evidence of change.
    p_value = np.where(np.isfinite(p_value), np.clip(p_value, 0.0, 1.0), 1.0)
    fdr = stats.false_discovery_control(p_value, method="bh")
    return DifferentialExpression(log2_fold_change, p_value, fdr)


def _significant_ranked(de: DifferentialExpression, fdr_threshold: float) -> np.ndarray:
    """Indices of the significant genes, largest ``|log2 fold change|`` first.

    cell-eval stores fold changes and FDRs as float32 and breaks ties in gene order; the
    same is done here so both rank genes identically.
    """
    fdr = np.asarray(de.fdr, dtype=np.float32)
    significant = np.flatnonzero(fdr < np.float32(fdr_threshold))
    size = np.abs(np.asarray(de.log2_fold_change, dtype=np.float32))[significant]
    return significant[np.argsort(-size, kind="stable")]


def de_overlap(
    pred_de: DifferentialExpression,
    obs_de: DifferentialExpression,
    k: int | None = None,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Overlap of the top predicted and top observed differentially expressed genes.

    cell-eval's ``overlap_at_N`` (``k=None``) and ``overlap_at_<k>``: genes with FDR below
    ``fdr_threshold`` are ranked by ``|log2 fold change|`` on each side; with ``k_eff`` the
    number of observed significant genes (capped at ``k``), the score is the size of the
    intersection of the top ``k_eff`` observed and top ``k_eff`` predicted genes divided by
    ``k_eff``. It is 0 when nothing is significant in the observed cells (cell-eval's
    convention; no overlap can be measured then).

    Parameters
    ----------
    pred_de, obs_de
        :func:`differential_expression` of the predicted and of the observed perturbed cells
        against their (matched) controls, over the same genes.
    k
        Compare the top ``k`` genes; ``None`` uses all observed significant genes.
    fdr_threshold
        Significance level on the Benjamini-Hochberg FDR.

    Returns
    -------
    float
        In ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> obs = DifferentialExpression(np.array([3.0, -2.0, 1.0, 0.1]), np.zeros(4),
    ...                              np.array([0.01, 0.01, 0.01, 0.5]))
    >>> pred = DifferentialExpression(np.array([2.0, 0.5, 1.0, 4.0]), np.zeros(4),
    ...                               np.array([0.01, 0.01, 0.01, 0.01]))
    >>> round(de_overlap(pred, obs), 4)   # top 3 observed {0, 1, 2}; top 3 predicted {3, 0, 2}
    0.6667
    >>> de_overlap(pred, obs, k=1)        # {0} against {3}
    0.0
    """
    _check_same_genes(pred_de, obs_de)
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive int or None, got {k!r}.")
    observed = _significant_ranked(obs_de, fdr_threshold)
    predicted = _significant_ranked(pred_de, fdr_threshold)
    k_eff = len(observed) if k is None else min(int(k), len(observed))
    if k_eff == 0:
        return 0.0
    return len(np.intersect1d(observed[:k_eff], predicted[:k_eff])) / k_eff


def de_direction_match(
    pred_de: DifferentialExpression,
    obs_de: DifferentialExpression,
    *,
    fdr_threshold: float = FDR_THRESHOLD,
) -> float:
    """Fraction of the observed significant genes whose predicted change has the same sign.

    cell-eval's ``de_direction_match``: over the genes with observed FDR below
    ``fdr_threshold``, the share with ``sign(predicted log2 fold change) == sign(observed)``
    (whether or not the predicted change is significant).

    Parameters
    ----------
    pred_de, obs_de
        :func:`differential_expression` results of the predicted and observed cells.
    fdr_threshold
        Significance level on the observed Benjamini-Hochberg FDR.

    Returns
    -------
    float
        In ``[0, 1]``; ``nan`` when no gene is significant in the observed cells.

    Examples
    --------
    >>> import numpy as np
    >>> obs = DifferentialExpression(np.array([3.0, -2.0, 1.0]), np.zeros(3),
    ...                              np.array([0.01, 0.01, 0.5]))
    >>> pred = DifferentialExpression(np.array([0.2, 0.3, -1.0]), np.zeros(3), np.ones(3))
    >>> de_direction_match(pred, obs)
    0.5
    """
    _check_same_genes(pred_de, obs_de)
    significant = np.flatnonzero(np.asarray(obs_de.fdr, dtype=np.float32)
                                 < np.float32(fdr_threshold))
    if len(significant) == 0:
        return float("nan")
    same = (np.sign(np.asarray(pred_de.log2_fold_change)[significant])
            == np.sign(np.asarray(obs_de.log2_fold_change)[significant]))
    return float(np.mean(same))


def _check_same_genes(pred_de: DifferentialExpression, obs_de: DifferentialExpression) -> None:
    for name, de in (("pred_de", pred_de), ("obs_de", obs_de)):
        if not isinstance(de, DifferentialExpression):
            raise TypeError(
                f"`{name}` must be a DifferentialExpression (from differential_expression), "
                f"got {type(de).__name__}."
            )
    if len(pred_de.fdr) != len(obs_de.fdr):
        raise ValueError(
            f"pred_de covers {len(pred_de.fdr)} genes, obs_de {len(obs_de.fdr)}: compute both "
            "over the same genes."
        )


#: Columns of :func:`gene_space_scores`, in table order.
GENE_SPACE_METRICS = ("pearson_delta", "mse_mean", "mae_mean", "overlap_at_N", "overlap_at_50",
                      "de_direction_match", "n_de_observed", "n_de_predicted")


def gene_space_scores(
    pred: Any,
    obs: Any,
    control: Any,
    *,
    control_pred: Any | None = None,
    obs_de: DifferentialExpression | None = None,
) -> dict[str, float]:
    """Every gene-space score of one prediction against one matched observation.

    ``pearson_delta``, ``mse_mean``, ``mae_mean``, ``overlap_at_N``, ``overlap_at_50`` and
    ``de_direction_match`` as cell-eval defines them (see the module notes), plus the numbers
    of significant genes, ``n_de_observed`` and ``n_de_predicted`` (cell-eval's
    ``de_nsig_counts``). Differential expression is computed like with like: the predicted
    cells against ``control_pred`` (the control cells as the prediction represents them) and
    the observed cells against the measured ``control``.

    Parameters
    ----------
    pred, obs
        Predicted and observed perturbed cells (log1p-normalised, same genes).
    control
        The matched measured control cells.
    control_pred
        The same control cells as the prediction represents them; defaults to ``control``.
    obs_de
        ``differential_expression(obs, control)`` when already computed (it does not depend
        on the prediction, so several methods can share it).

    Returns
    -------
    dict
        One float per name in ``GENE_SPACE_METRICS``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> control = np.log1p(rng.poisson(2.0, size=(80, 30)))
    >>> obs = np.log1p(rng.poisson(2.0 + 4.0 * (np.arange(30) < 5), size=(80, 30)))
    >>> scores = gene_space_scores(obs[:40], obs[40:], control)
    >>> scores["overlap_at_N"] > 0.5 and scores["pearson_delta"] > 0.9
    True
    """
    control_pred = control if control_pred is None else control_pred
    if obs_de is None:
        obs_de = differential_expression(obs, control)
    pred_de = differential_expression(pred, control_pred)
    return {
        "pearson_delta": pearson_delta(pred, obs, control, control_pred=control_pred),
        "mse_mean": mse_mean(pred, obs),
        "mae_mean": mae_mean(pred, obs),
        "overlap_at_N": de_overlap(pred_de, obs_de),
        "overlap_at_50": de_overlap(pred_de, obs_de, k=50),
        "de_direction_match": de_direction_match(pred_de, obs_de),
        "n_de_observed": float(len(_significant_ranked(obs_de, FDR_THRESHOLD))),
        "n_de_predicted": float(len(_significant_ranked(pred_de, FDR_THRESHOLD))),
    }
