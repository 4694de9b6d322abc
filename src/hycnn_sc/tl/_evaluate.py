"""``hycnn_sc.tl.evaluate``: score stored maps and baselines on held-out cells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import metrics
from .._docs import EXAMPLE_DATA, doc_params
from .._warnings import warn_user
from ..models._utils import resolve_device
from . import _inputs as inputs
from ._decode import ScviDecoder, check_model
from ._holdout import BASELINES, baseline_predictions, evaluate_holdout, subsample
from ._predict import gene_space, query_groups
from ._schema import (
    EVALUATION,
    EVALUATION_HOLDOUT,
    HELD_OUT,
    TRAIN,
    FitParams,
    cell_strata,
    decode_map,
    find_maps,
    fit_params,
    map_label,
    pca_genes,
    pca_projection,
    read_fitted,
    split_key,
)

#: Metrics of every comparison.
METRICS = ("mmd", "energy_distance", "r2_mean", "signature_l2")
#: cell-eval's scores, in gene space only (``nan`` in the representation's rows).
GENE_METRICS = metrics.GENE_SPACE_METRICS
#: Total per cell of the expression that scVI-decoded and measured cells are compared in.
SCVI_TARGET_SUM = 1e4


class _PcaGenes:
    """Gene space of maps fitted on a scanpy PCA: back-projection vs the measured ``X``."""

    def __init__(self, adata: AnnData, stored: dict) -> None:
        self.adata, self.stored = adata, stored
        self.genes = pca_genes(stored)

    def observed(self, rows: np.ndarray) -> np.ndarray:
        return inputs.read_rows(self.adata, rows, None, None)[:, self.genes]

    def predicted(self, values: np.ndarray, source_rows: np.ndarray) -> np.ndarray:
        return gene_space(self.stored, values)[:, self.genes]


class _ScviGenes:
    """Gene space of maps fitted on an scVI latent: decoded vs measured counts, both normalised
    to ``SCVI_TARGET_SUM`` per cell and log1p-transformed."""

    def __init__(self, decoder: ScviDecoder) -> None:
        self.decoder = decoder

    def observed(self, rows: np.ndarray) -> np.ndarray:
        return self.decoder.observed(rows, SCVI_TARGET_SUM)

    def predicted(self, values: np.ndarray, source_rows: np.ndarray) -> np.ndarray:
        frequencies, _ = self.decoder.decode(values, source_rows)
        return np.log1p(frequencies * SCVI_TARGET_SUM)


def _gene_space_of(adata: AnnData, stored: dict, scvi_model) -> _PcaGenes | _ScviGenes | None:
    """How predictions reach gene space, or None when they cannot."""
    params = fit_params(stored)
    use_rep = params.use_rep
    if scvi_model is not None:
        if use_rep is None:
            raise ValueError(
                "scvi_model= decodes latent states, but the maps were fitted on X (use_rep=None); "
                "fit them on the scVI latent (use_rep='X_scVI') or leave scvi_model out."
            )
        check_model(scvi_model)
        n_latent = int(scvi_model.module.n_latent)
        if params.n_features != n_latent:
            raise ValueError(
                f"The maps were fitted on obsm[{use_rep!r}] with {params.n_features} "
                f"dimensions, the scVI model's latent space has {n_latent}: pass the model "
                "whose latent the maps were fitted on."
            )
        return _ScviGenes(ScviDecoder(scvi_model, adata, use_rep=use_rep))
    if pca_projection(stored) is not None:
        return _PcaGenes(adata, stored)
    return None


def _score(predicted: np.ndarray, observed: np.ndarray, control: np.ndarray) -> dict[str, float]:
    return {
        "mmd": metrics.mmd(predicted, observed),
        "energy_distance": metrics.energy_distance(predicted, observed),
        "r2_mean": metrics.r2_mean(predicted, observed),
        "signature_l2": metrics.signature_l2(predicted, observed, control),
    }


@doc_params(example_data=EXAMPLE_DATA)
def evaluate(
    adata: AnnData,
    *,
    key: str = "hycnn",
    target: str | None = None,
    by: str | None = None,
    gene_space_metrics: bool = True,
    max_cells: int = 2000,
    seed: int = 0,
    device: str = "auto",
    holdout: str | None = None,
    scvi_model=None,
) -> pd.DataFrame:
    """Compare predicted with observed held-out perturbed cells, beside simple baselines.

    For every stored map, the held-out control cells (see ``holdout_fraction`` of
    :func:`fit_transport`) are mapped and compared with the held-out perturbed cells. The
    same held-out control cells are also moved by three baselines fitted on the training
    cells: ``identity`` (unmoved control), ``mean_shift`` (control plus the difference of
    means) and ``gaussian_ot`` (the closed-form Gaussian OT map; covariances get a ridge of
    ``1e-3`` times the mean feature variance, so it stays defined for small groups). An ``observed`` row
    compares the training perturbed cells with the held-out ones: the floor that sampling
    noise alone reaches.

    Metrics (see :mod:`hycnn_sc.metrics`): ``mmd`` (squared MMD, RBF kernel averaged over
    the median-heuristic bandwidth times 0.25, 0.5, 1, 2, 4), ``energy_distance``,
    ``r2_mean`` (squared Pearson correlation of per-feature means) and ``signature_l2``
    (l2 error of predicted minus control mean against observed minus control mean; lower is
    better for all but ``r2_mean``). They are computed in the representation (``space="rep"``)
    and, when the representation is a scanpy PCA or ``X`` itself, in gene space
    (``space="gene"``: predictions and the ``observed`` floor back-projected through the PCA,
    compared with the held-out cells' ``X`` over the genes with PCA loadings). For maps fitted
    on an scVI latent, pass ``scvi_model=``: gene space is then the model's decoded expression
    (each prediction with its control cell's library size and batch, see
    :func:`~hycnn_sc.tl.decode`) against the measured counts, both normalised to 10,000 per cell
    and log1p-transformed.

    In gene space the rows also carry cell-eval's scores (``nan`` in ``space="rep"``; see
    :mod:`hycnn_sc.metrics`): ``pearson_delta``, ``mse_mean``, ``mae_mean``,
    ``overlap_at_N``, ``overlap_at_50``, ``de_direction_match`` (higher is better for all but
    the errors) and the numbers of significant genes ``n_de_observed`` / ``n_de_predicted``.
    Controls are matched (the held-out control cells of the same stratum and ``by`` group) and
    compared like with like: observed cells and their differential expression against the
    measured controls, predictions (and the ``observed`` floor) against the same controls
    passed through the same decoding (PCA back-projection or scVI decoder). Decoded cells
    are dense and smooth, so testing them against measured (sparse) controls would mark most
    genes as significant for every method, the unmoved control included.

    Parameters
    ----------
    adata
        AnnData with maps fitted by :func:`fit_transport` (held-out cells needed).
    key
        ``key_added`` of :func:`fit_transport`.
    target
        Evaluate only this target (default: all).
    by
        ``obs`` column (e.g. ``"cell_type"``): also report every group of it separately
        (``group`` column), beside ``"all"``.
    gene_space_metrics
        Also compute gene-space metrics when possible (a scanpy PCA, ``X`` itself, or an scVI
        latent with ``scvi_model``).
    max_cells
        Cap on cells per compared set (random subsample), bounding run time.
    seed
        Seed of that subsample.
    device
        Where to run the maps.
    holdout
        ``obs`` column (e.g. ``"patient_id"``, ``"cell_line"``): leave-one-group-out
        evaluation instead. For every group, the maps are refitted with the stored settings
        (``groups``, model arguments, seed) on all other groups, and the group's perturbed
        cells are predicted from its own control cells, beside ``identity``, ``mean_shift``
        and ``gaussian_ot`` fitted on the same cells, and an ``observed`` floor (two random
        halves of the group's perturbed cells). The representation is the stored one (a PCA
        computed on all cells saw the held-out group's cells; fit the PCA without them for
        a strict protocol, as ``benchmarks/generalisation.py`` does). Needs no held-out cells
        (``holdout_fraction`` may be 0); ``split_by`` maps are not supported. Returns one
        row per group, target and method, with the model rows' chosen ``frame``,
        ``shrinkage`` and ``residual_weight``; stored as
        ``adata.uns[key]['evaluation_holdout']``. ``by`` and ``gene_space_metrics`` do not
        apply.
    scvi_model
        The trained ``scvi.model.SCVI`` whose latent (``use_rep``) the maps were fitted on:
        gene-space metrics of decoded predictions (needs scvi-tools, ``hycnn-sc[scvi]``).

    Maps with fewer than 2 held-out cells on a side (small strata) are left out with a
    warning; a ``ValueError`` is raised when no map can be evaluated.

    Returns
    -------
    Long table with columns ``target``, ``stratum``, ``group``, ``space``, ``method``,
    ``n_predicted``, ``n_observed``, the metrics and the gene-space scores. Also stored as
    ``adata.uns[key]['evaluation']``.

    Examples
    --------
    {example_data}
    >>> hs.tl.fit_transport(adata, groupby="condition", source="control",  # hold 20 % out
    ...                     holdout_fraction=0.2, n_iters=20, hidden=(8,), warm_start_iters=20)
    >>> table = hs.tl.evaluate(adata)
    >>> sorted(table["method"].unique())
    ['gaussian_ot', 'hycnn', 'identity', 'mean_shift', 'observed']
    """
    stored = read_fitted(inputs.check_adata(adata), key)
    params = fit_params(stored)
    maps = find_maps(stored, target)
    resolve_device(device)
    if isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer)) or max_cells < 2:
        raise ValueError(f"max_cells must be an int >= 2, got {max_cells!r}.")
    if holdout is not None:
        _check_holdout(params, holdout)
        targets = sorted({map_label(entry)[0] for entry in maps.values()})
        table = evaluate_holdout(adata, stored, holdout, targets, _score, max_cells, seed, device)
        adata.uns[key][EVALUATION_HOLDOUT] = table
        return table
    cells = _HeldOutCells.of(adata, params, split_key(key), by)
    run = _Evaluation(
        adata=adata, params=params, device=device, max_cells=max_cells,
        rng=np.random.default_rng(seed), genes=_gene_space_of(adata, stored, scvi_model) if gene_space_metrics else None,
    )
    records: list[dict[str, Any]] = []
    too_few: list[str] = []
    for mid, entry in maps.items():
        label, stratum = map_label(entry)
        rows = cells.rows(label, stratum)
        if len(rows[("source", "held")]) < 2 or len(rows[("target", "held")]) < 2:
            too_few.append(f"{label!r}" + (f" ({params.split_by}={stratum!r})" if stratum else ""))
            continue
        records += run.score_map(mid, entry, rows, cells.by_values)
    if too_few:
        _warn_too_few(too_few, len(maps))
    table = _sorted_table(records, params.model)
    adata.uns[key][EVALUATION] = table
    return table


def _check_holdout(params: FitParams, holdout: Any) -> None:
    if params.conditional:
        raise ValueError(
            "evaluate(holdout=...) refits unconditional maps; for a conditional map, leave "
            "the group out of fit_transport (covariates keep it as a context) and predict it "
            "from its control cells with predict(), as benchmarks/conditional.py does."
        )
    if not isinstance(holdout, str):
        raise TypeError(f"holdout must be the name of an obs column (a str), got {holdout!r}.")


@dataclass
class _HeldOutCells:
    """The fitted AnnData's labels, split and strata: which cells each map is scored on."""

    labels: np.ndarray
    held: np.ndarray
    train: np.ndarray
    strata: np.ndarray
    source: str
    by_values: np.ndarray | None

    @classmethod
    def of(cls, adata: AnnData, params: FitParams, split_column: str,
           by: str | None) -> _HeldOutCells:
        for column in (params.groupby, split_column, params.split_by):
            if column and column not in adata.obs:
                raise KeyError(
                    f"obs[{column!r}] is missing; evaluate needs the AnnData the maps were fitted "
                    "on (with the columns fit_transport used and wrote)."
                )
        if by is not None and by not in adata.obs:
            raise KeyError(
                f"by={by!r} is not a column of adata.obs; available: {list(adata.obs.columns)}."
            )
        split = adata.obs[split_column].astype(str)
        return cls(
            labels=adata.obs[params.groupby].astype(str).to_numpy(),
            held=(split == HELD_OUT).to_numpy(),
            train=(split == TRAIN).to_numpy(),
            strata=cell_strata(adata, params.strata_columns),
            source=params.source,
            by_values=adata.obs[by].astype(str).to_numpy() if by else None,
        )

    def rows(self, label: str, stratum: str) -> dict[tuple[str, str], np.ndarray]:
        """Rows of the (source | target, held | train) cells of one map."""
        # A conditional map's stratum may end in "|dose=<d>": its context is the part before.
        in_stratum = self.strata == stratum.split("|dose=")[0]
        return {
            (side, part): np.flatnonzero(in_stratum & (self.labels == name) & mask)
            for side, name in (("source", self.source), ("target", label))
            for part, mask in (("held", self.held), ("train", self.train))
        }


@dataclass
class _Evaluation:
    """Scores stored maps against held-out cells (one :meth:`score_map` call per map)."""

    adata: AnnData
    params: FitParams
    device: str
    max_cells: int
    rng: np.random.Generator
    genes: _PcaGenes | _ScviGenes | None

    def score_map(self, mid: str, entry: dict[str, Any], rows: dict,
                  by_values: np.ndarray | None) -> list[dict[str, Any]]:
        """Rows of the table for one stored map: every comparison group, space and method."""
        p = self.params
        read = {k: inputs.read_rows(self.adata, r, p.use_rep, p.layer) for k, r in rows.items()}
        tmap = decode_map(entry, device=self.device, name=mid)
        control = read[("source", "held")]
        units = query_groups(self.adata, p, rows[("source", "held")])
        predictions = {
            p.model: tmap.transport(control, groups=units),
            **baseline_predictions(read[("source", "train")], read[("target", "train")], control),
        }
        records = []
        for group, masks in _comparison_groups(rows, by_values).items():
            if masks[0].sum() < 2 or masks[1].sum() < 2:
                continue
            picks = [subsample(np.flatnonzero(mask), self.max_cells, self.rng) for mask in masks]
            label, stratum = map_label(entry)
            base = {"target": label, "stratum": stratum, "group": group}
            for space, compared in self._spaces(rows, read, predictions, *picks).items():
                records += _score_space(compared, {**base, "space": space})
        return records

    def _spaces(self, rows: dict, read: dict, predictions: dict[str, np.ndarray],
                pick_source: np.ndarray, pick_target: np.ndarray,
                pick_reference: np.ndarray) -> dict[str, tuple]:
        """Per space: (observed, control, predictions, observed floor[, measured control, DE])."""
        control = read[("source", "held")]
        spaces = {"rep": (read[("target", "held")][pick_target], control[pick_source],
                          {m: p[pick_source] for m, p in predictions.items()},
                          read[("target", "train")][pick_reference])}
        genes = self.genes
        if genes is not None:
            control_rows = rows[("source", "held")][pick_source]
            reference_rows = rows[("target", "train")][pick_reference]
            observed = genes.observed(rows[("target", "held")][pick_target])
            # The floor goes through the same decoding (PCA reconstruction or scVI decoder)
            # as the predictions, each cell with its own library size.
            spaces["gene"] = (
                observed,
                genes.predicted(control[pick_source], control_rows),
                {m: genes.predicted(p[pick_source], control_rows) for m, p in predictions.items()},
                genes.predicted(read[("target", "train")][pick_reference], reference_rows),
            )
            measured_control = genes.observed(control_rows)
            spaces["gene"] += (measured_control,
                               metrics.differential_expression(observed, measured_control))
        return spaces


def _comparison_groups(rows: dict, by_values: np.ndarray | None) -> dict[str, tuple]:
    """Masks of (held-out control, held-out target, training target) cells per ``by`` group."""
    groups = {"all": (np.ones(len(rows[("source", "held")]), bool),
                      np.ones(len(rows[("target", "held")]), bool),
                      np.ones(len(rows[("target", "train")]), bool))}
    if by_values is not None:
        for value in np.unique(by_values[rows[("target", "held")]]):
            groups[value] = (by_values[rows[("source", "held")]] == value,
                             by_values[rows[("target", "held")]] == value,
                             by_values[rows[("target", "train")]] == value)
    return groups


def _score_space(compared: tuple, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per method (and the observed floor) in one space."""
    observed, control, predicted, reference, *gene_context = compared
    records = []
    for method, values in [*predicted.items(), ("observed", reference)]:
        if len(values) < 2:
            continue
        gene_scores = {}
        if gene_context:
            measured_control, observed_de = gene_context
            gene_scores = metrics.gene_space_scores(
                values, observed, measured_control, control_pred=control, obs_de=observed_de)
        records.append({**base, "method": method, "n_predicted": len(values),
                        "n_observed": len(observed), **_score(values, observed, control),
                        **gene_scores})
    return records


def _warn_too_few(too_few: list[str], n_maps: int) -> None:
    """Maps without 2 held-out cells on a side: a warning, or an error when no map is left."""
    message = (
        f"{len(too_few)} of {n_maps} map(s) have fewer than 2 held-out cells on a side: "
        f"{', '.join(too_few[:10])}{' ...' if len(too_few) > 10 else ''}"
    )
    if len(too_few) == n_maps:
        raise ValueError(
            f"Nothing to evaluate: {message}. fit_transport uses every cell by default; refit "
            "with holdout_fraction=0.2 to hold cells out for evaluate, or evaluate "
            "generalisation to new groups with evaluate(adata, holdout='patient_id')."
        )
    warn_user(
        f"Not evaluated: {message}. Refit with a larger holdout_fraction to include them.",
        UserWarning,
    )


def _sorted_table(records: list[dict[str, Any]], model_name: str) -> pd.DataFrame:
    columns = ["target", "stratum", "group", "space", "method", "n_predicted", "n_observed",
               *METRICS, *GENE_METRICS]
    table = pd.DataFrame.from_records(records, columns=columns)
    order = {name: i for i, name in enumerate([model_name, *BASELINES, "observed"])}
    return table.sort_values(
        ["target", "stratum", "group", "space", "method"],
        key=lambda column: column.map(order) if column.name == "method" else column,
    ).reset_index(drop=True)
