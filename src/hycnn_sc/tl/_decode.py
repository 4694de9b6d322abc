"""scVI latent in, genes out: ``hycnn_sc.tl.scvi_latent`` and ``hycnn_sc.tl.decode``.

Maps can be fitted in the latent space of a trained ``scvi.model.SCVI``
(``fit_transport(adata, ..., use_rep="X_scVI")``); :func:`decode` turns predicted latent states
back into expression through that model's decoder. scvi-tools is an optional dependency
(``pip install "hycnn-sc[scvi]"``), imported only here and only when called.

Storage (the scVI part of the AnnData contract; the model itself is never stored, it has its
own ``save``)::

    adata.uns["hycnn_scvi"][<obsm key>] = {   # written by scvi_latent
        "n_latent": int, "var_names": ndarray[str], "fingerprint": str (sha256 of the
        module's weights), "layer": str ("" for X), "scvi_version": str,
    }
    decoded.uns["hycnn_decode"] = {           # written by decode on the AnnData it returns
        "use_rep", "n_latent", "fingerprint", "layer", "target_sum", "log1p", "batch",
    }
    decoded.layers["normalized"]       # expression scaled to target_sum per cell
    decoded.layers["expected_counts"]  # the decoder's mean counts at the source cell's depth

scvi-tools 1.4 has no public method that decodes a *given* latent state
(``get_normalized_expression`` re-encodes the cells' counts first), so :func:`decode` calls
the trained module's generative model, ``model.module.generative`` (documented on
``scvi.module.VAE``), as ``get_normalized_expression`` itself does after inference, and reads
``px.get_normalized("scale")`` / ``("mu")``. Everything else (latent states, setup registry,
batch mapping, training flag) comes from the public model API.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._warnings import warn_user
from . import _inputs as inputs
from ._schema import PREDICTION_KEY, SOURCE_COLUMN

#: ``uns`` key of the records of the scVI models behind ``obsm`` latents.
SCVI_KEY = "hycnn_scvi"
#: ``uns`` key of the decoding record on the AnnData :func:`decode` returns.
DECODE_KEY = "hycnn_decode"
NORMALIZED_LAYER = "normalized"
EXPECTED_COUNTS_LAYER = "expected_counts"
DEFAULT_REP = "X_scVI"
#: Rows whose counts are checked to be non-negative integers.
_COUNT_CHECK_ROWS = 200
#: Layer argument meaning "the layer the scVI model was set up with".
_MODEL_LAYER = "model"


def import_scvi():
    """The ``scvi`` package, or an ImportError that says how to install it."""
    try:
        import scvi
    except ImportError as error:
        raise ImportError(
            "Decoding scVI latent states needs scvi-tools, an optional dependency of hycnn_sc: "
            'install it with `pip install "hycnn-sc[scvi]"` (scvi-tools 1.4).'
        ) from error
    return scvi


def check_model(scvi_model: Any):
    scvi = import_scvi()
    if not isinstance(scvi_model, scvi.model.SCVI):
        raise TypeError(
            f"scvi_model must be a trained scvi.model.SCVI, got {type(scvi_model).__name__}."
        )
    if not scvi_model.is_trained:
        raise ValueError("scvi_model has not been trained: call scvi_model.train() first.")
    return scvi


def fingerprint(scvi_model: Any) -> str:
    """SHA-256 of the module's weights (names, dtypes, shapes and values), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(scvi_model.module.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _fields(scvi_model: Any) -> dict[str, Any]:
    return scvi_model.registry_["field_registries"]


def _model_genes(scvi_model: Any) -> np.ndarray:
    return np.asarray(_fields(scvi_model)["X"]["state_registry"]["column_names"]).astype(str)


def _model_layer(scvi_model: Any) -> str | None:
    return scvi_model.registry_["setup_args"].get("layer")


def _record(scvi_model: Any, scvi) -> dict[str, Any]:
    return {
        "n_latent": int(scvi_model.module.n_latent),
        "var_names": _model_genes(scvi_model),
        "fingerprint": fingerprint(scvi_model),
        "layer": _model_layer(scvi_model) or "",
        "scvi_version": str(scvi.__version__),
    }


def _check_genes(scvi_model: Any, reference: AnnData, what: str) -> None:
    genes = _model_genes(scvi_model)
    shared = inputs.shared_genes(genes, reference.var_names)
    if shared is not None:
        raise ValueError(
            f"The scVI model was trained on {len(genes)} genes, {what} has {reference.n_vars} "
            f"({shared} shared, or another order): it is not the AnnData the model was set up "
            "with. Pass that AnnData (same genes in the same order), or the scVI model trained "
            "on these genes."
        )


def scvi_latent(
    adata: AnnData,
    *,
    scvi_model: Any,
    key_added: str = DEFAULT_REP,
    batch_size: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Write a trained scVI model's latent representation, and record which model it was.

    ``obsm[key_added]`` gets the posterior means of the latent states
    (``scvi_model.get_latent_representation``); ``uns['hycnn_scvi'][key_added]`` records the
    model's latent width, genes and a fingerprint of its weights (SHA-256), so that
    :func:`decode` can refuse a different model later. Fit maps on it with
    ``fit_transport(adata, ..., use_rep=key_added)``.

    Parameters
    ----------
    adata
        The AnnData the model was set up with (``SCVI.setup_anndata``), or one with the same
        genes and setup columns.
    scvi_model
        A trained ``scvi.model.SCVI``.
    key_added
        ``obsm`` key of the latent representation.
    batch_size
        Cells per inference batch (scvi-tools' default when ``None``).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or the copy with ``copy=True``.

    Raises
    ------
    ImportError
        scvi-tools is not installed (``pip install "hycnn-sc[scvi]"``).
    ValueError
        The model is untrained or was trained on other genes.

    Examples
    --------
    >>> import hycnn_sc as hs
    >>> import scvi  # doctest: +SKIP
    >>> adata = hs.datasets.kang_ifnb1k()  # doctest: +SKIP
    >>> scvi.model.SCVI.setup_anndata(adata)  # doctest: +SKIP
    >>> model = scvi.model.SCVI(adata, n_latent=10)  # doctest: +SKIP
    >>> model.train(max_epochs=5)  # doctest: +SKIP
    >>> hs.tl.scvi_latent(adata, scvi_model=model)  # doctest: +SKIP
    >>> adata.obsm["X_scVI"].shape  # doctest: +SKIP
    (832, 10)
    """
    scvi = check_model(scvi_model)
    inputs.check_adata(adata)
    if not isinstance(key_added, str) or not key_added:
        raise TypeError(f"key_added must be a non-empty str, got {key_added!r}.")
    _check_genes(scvi_model, adata, "adata")
    latent = np.asarray(
        scvi_model.get_latent_representation(adata, batch_size=batch_size), dtype=np.float32
    )
    target = adata.copy() if copy else adata
    target.obsm[key_added] = latent
    records = dict(target.uns.get(SCVI_KEY, {}))
    records[key_added] = _record(scvi_model, scvi)
    target.uns[SCVI_KEY] = records
    return target if copy else None


def check_latent(latent: Any, n_latent: int, what: str) -> np.ndarray:
    """``latent`` as float32 ``[n, n_latent]``, or a ValueError naming both widths."""
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 2 or latent.shape[1] != n_latent:
        raise ValueError(
            f"{what} has latent states of width {latent.shape[-1] if latent.ndim else 0}, the "
            f"scVI model's latent space has {n_latent} dimensions: decode latent states of this "
            "model (e.g. predicted by maps fitted on the obsm entry it wrote)."
        )
    if not np.isfinite(latent).all():
        raise ValueError(f"{what} contains NaN or infinite latent values.")
    return latent


class ScviDecoder:
    """A trained scVI model's decoder bound to the AnnData that holds the source cells.

    Construction checks everything that can be checked without a latent state (model,
    genes, recorded fingerprint, count layer, covariate columns); :meth:`decode` then turns
    latent states into expression with the library size and covariates of given source rows.
    Used by :func:`decode` and by :func:`hycnn_sc.tl.evaluate` (``scvi_model=``).
    """

    def __init__(self, scvi_model: Any, reference: AnnData, *, use_rep: str,
                 layer: str | None = _MODEL_LAYER, batch: str | None = None) -> None:
        scvi = check_model(scvi_model)
        self.model = scvi_model
        self.reference = reference
        self.use_rep = use_rep
        self.n_latent = int(scvi_model.module.n_latent)
        _check_genes(scvi_model, reference, "the AnnData holding the source cells")
        self.fingerprint = fingerprint(scvi_model)
        self._check_record(scvi)
        self.layer = _model_layer(scvi_model) if layer == _MODEL_LAYER else layer
        if self.layer is not None and self.layer not in reference.layers:
            raise KeyError(
                f"adata.layers[{self.layer!r}] is missing: decode reads each source cell's "
                f"library size (its total counts over the model's genes) from the count layer "
                f"the scVI model was set up with ({self.layer!r}). Add the raw counts there or "
                "pass layer= naming the layer that holds them."
            )
        setup = scvi_model.registry_["setup_args"]
        self.size_factor_key = setup.get("size_factor_key")
        if self.size_factor_key and self.size_factor_key not in reference.obs:
            raise KeyError(
                f"obs[{self.size_factor_key!r}] (the scVI model's size_factor_key) is missing "
                "from the AnnData holding the source cells."
            )
        self.batch = batch
        self._codes_of("batch", np.arange(0))  # checks the columns and the batch override
        self._codes_of("labels", np.arange(0))

    def _check_record(self, scvi) -> None:
        record = self.reference.uns.get(SCVI_KEY, {}).get(self.use_rep)
        if record is None:
            warn_user(
                f"No record of the scVI model behind obsm[{self.use_rep!r}] "
                f"(uns[{SCVI_KEY!r}]): only the latent width and the genes are checked. Write "
                "the latent with hycnn_sc.tl.scvi_latent(adata, scvi_model=model) so decode can "
                "also check that it is the same model.",
                UserWarning,
            )
            return
        if int(record["n_latent"]) != self.n_latent or str(record["fingerprint"]) != self.fingerprint:
            raise ValueError(
                f"scvi_model is not the model obsm[{self.use_rep!r}] came from: its weights "
                f"(fingerprint {self.fingerprint[:12]}…, n_latent={self.n_latent}) differ from "
                f"the recorded ones ({str(record['fingerprint'])[:12]}…, "
                f"n_latent={int(record['n_latent'])}). Pass the model that wrote the latent, or "
                "recompute it with hycnn_sc.tl.scvi_latent(adata, scvi_model=model) and refit."
            )

    def _codes_of(self, field: str, rows: np.ndarray) -> np.ndarray:
        """Integer codes of a registered categorical field (batch, labels) for ``rows``."""
        state = _fields(self.model)[field]["state_registry"]
        mapping = np.asarray(state["categorical_mapping"]).astype(str)
        column = str(state["original_key"])
        if field == "batch" and self.batch is not None:
            if str(self.batch) not in mapping:
                raise ValueError(
                    f"batch={self.batch!r} is not a batch of the scVI model; its batches are "
                    f"{mapping.tolist()[:20]}."
                )
            return np.full(len(rows), int(np.flatnonzero(mapping == str(self.batch))[0]))
        if column.startswith("_scvi"):  # registered without a key: a single category
            return np.zeros(len(rows), dtype=np.int64)
        if column not in self.reference.obs:
            raise KeyError(
                f"obs[{column!r}] (the scVI model's {field} column) is missing from the AnnData "
                "holding the source cells" + (
                    "; pass batch= to decode every cell as one batch." if field == "batch" else "."
                )
            )
        values = self.reference.obs[column].astype(str).to_numpy()[rows]
        index = pd.Index(mapping).get_indexer(values)
        if (index < 0).any():
            unknown = sorted(set(values[index < 0]))[:10]
            raise ValueError(
                f"Source cells have obs[{column!r}] values the scVI model does not know: "
                f"{unknown}; its categories are {mapping.tolist()[:20]}."
            )
        return index.astype(np.int64)

    def _covariates(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Extra categorical codes and continuous values of the source rows (or None)."""
        fields = _fields(self.model)
        categorical = continuous = None
        state = fields.get("extra_categorical_covs", {}).get("state_registry", {})
        if state.get("field_keys"):
            codes = []
            for key in state["field_keys"]:
                mapping = pd.Index(np.asarray(state["mappings"][key]).astype(str))
                index = mapping.get_indexer(self.reference.obs[key].astype(str).to_numpy()[rows])
                if (index < 0).any():
                    raise ValueError(f"Source cells have obs[{key!r}] categories the model lacks.")
                codes.append(index)
            categorical = np.stack(codes, axis=1).astype(np.int64)
        state = fields.get("extra_continuous_covs", {}).get("state_registry", {})
        if state.get("columns") is not None and len(state["columns"]):
            continuous = self.reference.obs[list(state["columns"])].to_numpy(np.float32)[rows]
        return categorical, continuous

    def counts(self, rows: np.ndarray) -> np.ndarray | sp.spmatrix:
        """Raw counts of ``rows`` (the model's count layer), checked to be counts."""
        matrix = self.reference.X if self.layer is None else self.reference.layers[self.layer]
        where = "adata.X" if self.layer is None else f"adata.layers[{self.layer!r}]"
        if matrix is None:
            raise ValueError(f"{where} is empty: decode needs raw counts for library sizes.")
        values = matrix[rows]
        sample = values[:_COUNT_CHECK_ROWS]
        sample = sample.data if sp.issparse(sample) else np.asarray(sample)
        if sample.size and ((sample < 0).any() or not np.allclose(sample, np.round(sample))):
            raise ValueError(
                f"{where} does not hold raw counts (negative or non-integer values), so it gives "
                "no library sizes: pass layer= naming the layer with the raw counts the scVI "
                "model was trained on (e.g. layer='counts')."
            )
        return values

    def library(self, rows: np.ndarray) -> np.ndarray:
        """Library size of each source row: total counts, or the model's size factor."""
        if self.size_factor_key:
            library = self.reference.obs[self.size_factor_key].to_numpy(np.float64)[rows]
        else:
            library = np.asarray(self.counts(rows).sum(axis=1), dtype=np.float64).ravel()
        if len(library) and not (library > 0).all():
            empty = np.asarray(self.reference.obs_names)[rows][~(library > 0)][:5].tolist()
            raise ValueError(f"Source cells without counts (library size 0): {empty}.")
        return library

    def observed(self, rows: np.ndarray, target_sum: float) -> np.ndarray:
        """``rows``' own counts normalised to ``target_sum`` per cell, then log1p."""
        counts = self.counts(rows)
        counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        counts = counts.astype(np.float64)
        totals = counts.sum(axis=1, keepdims=True)
        return np.log1p(counts / np.maximum(totals, 1e-12) * target_sum).astype(np.float32)

    def decode(self, latent: np.ndarray, rows: np.ndarray, *,
               batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Frequencies (rows sum to 1) and expected counts of ``latent`` with ``rows``' depth."""
        import torch

        latent = check_latent(latent, self.n_latent, "The latent states")
        library = self.library(rows)
        batch_codes = self._codes_of("batch", rows)
        labels = self._codes_of("labels", rows)
        categorical, continuous = self._covariates(rows)
        module = self.model.module
        was_training = module.training
        module.eval()
        frequencies, expected = [], []
        try:
            with torch.no_grad():
                for start in range(0, len(latent), batch_size):
                    part = slice(start, start + batch_size)
                    log_library = torch.as_tensor(np.log(library[part]), dtype=torch.float32)[:, None]
                    output = module.generative(
                        z=torch.as_tensor(latent[part]),
                        library=log_library,
                        batch_index=torch.as_tensor(batch_codes[part])[:, None],
                        cont_covs=None if continuous is None else torch.as_tensor(continuous[part]),
                        cat_covs=None if categorical is None else torch.as_tensor(categorical[part]),
                        size_factor=log_library if self.size_factor_key else None,
                        y=torch.as_tensor(labels[part])[:, None],
                    )
                    px = output["px"]
                    frequencies.append(px.get_normalized("scale").cpu().numpy())
                    expected.append(px.get_normalized("mu").cpu().numpy())
        finally:
            module.train(was_training)
        if not frequencies:
            n_genes = len(_model_genes(self.model))
            return np.zeros((0, n_genes), np.float32), np.zeros((0, n_genes), np.float32)
        return np.concatenate(frequencies), np.concatenate(expected)


def _source_rows(data: AnnData, reference: AnnData, explicit_reference: bool) -> np.ndarray:
    """Rows of ``reference`` holding each cell's source cell (library size, covariates)."""
    if SOURCE_COLUMN in data.obs:
        names = data.obs[SOURCE_COLUMN].astype(str).to_numpy()
        what = f"obs[{SOURCE_COLUMN!r}]"
    elif explicit_reference:
        names = np.asarray(data.obs_names).astype(str)
        what = "obs_names"
    else:
        return np.arange(data.n_obs)
    rows = reference.obs_names.get_indexer(names)
    if (rows < 0).any():
        raise KeyError(
            f"{what} names cells that are not in adata, e.g. {names[rows < 0][:5].tolist()}: "
            "pass adata= the AnnData the predictions were made from."
        )
    return rows


def decode(
    data: AnnData,
    *,
    scvi_model: Any,
    adata: AnnData | None = None,
    use_rep: str | None = None,
    layer: str | None = _MODEL_LAYER,
    batch: str | None = None,
    target_sum: float = 1e4,
    log1p: bool = True,
    batch_size: int = 4096,
) -> AnnData:
    """Decode latent states (e.g. predicted cells) to gene expression through a trained scVI model.

    Every cell is decoded with the library size and covariates of its *source cell*: for the
    output of :func:`hycnn_sc.tl.predict`, the control cell it was predicted from
    (``obs['source_cell']``, looked up in ``adata``); for cells of ``adata`` itself, the cell
    itself. The library size is the source cell's total count over the model's genes (in the
    count layer the model was set up with), or its ``size_factor_key`` value; the batch,
    labels and extra covariates are the source cell's unless ``batch=`` fixes the batch.

    Parameters
    ----------
    data
        Cells with latent states in ``obsm[use_rep]``: the output of :func:`~hycnn_sc.tl.predict`
        for maps fitted on an scVI latent, or (a subset of) ``adata``.
    scvi_model
        The trained ``scvi.model.SCVI`` whose latent space the states live in.
    adata
        The AnnData holding the source cells: the one the model was set up with (same genes),
        with its raw counts. Required for :func:`~hycnn_sc.tl.predict` output; defaults to
        ``data`` otherwise.
    use_rep
        ``obsm`` key of the latent states; default: the ``use_rep`` recorded by ``predict``,
        else ``"X_scVI"``.
    layer
        Layer with the raw counts for library sizes; default: the layer the scVI model was
        set up with (``None`` means ``X``).
    batch
        Decode every cell in this batch of the model instead of its source cell's batch.
    target_sum
        Total of each decoded cell in ``layers['normalized']`` (as ``sc.pp.normalize_total``).
    log1p
        ``X`` holds ``log1p`` of the normalised expression (else the normalised expression).
    batch_size
        Cells per decoder call.

    Returns
    -------
    A new AnnData over the model's genes: ``X`` (``log1p`` of) the normalised expression,
    ``layers['normalized']`` the decoder's expression frequencies times ``target_sum``,
    ``layers['expected_counts']`` its mean counts at the source cell's library size,
    ``obsm[use_rep]`` the latent states, ``obs`` copied from ``data`` and
    ``uns['hycnn_decode']`` (model fingerprint, ``n_latent``, ``layer``, ``target_sum``,
    ``log1p``, ``batch``). Neither ``data`` nor ``adata`` is modified.

    Raises
    ------
    ImportError
        scvi-tools is not installed (``pip install "hycnn-sc[scvi]"``).
    ValueError
        The model was trained on other genes than ``adata``'s, the latent width differs from
        the model's, the model is not the one recorded by :func:`scvi_latent` for ``use_rep``,
        or the count layer does not hold counts.
    KeyError
        The latent, the count layer or a covariate column is missing, or source cells are not
        in ``adata``.

    Examples
    --------
    >>> import hycnn_sc as hs
    >>> hs.tl.scvi_latent(adata, scvi_model=model)  # doctest: +SKIP
    >>> hs.tl.fit_transport(adata, groupby="condition", source="control",
    ...                     use_rep="X_scVI")  # doctest: +SKIP
    >>> predicted = hs.tl.predict(adata, target="stimulated")  # doctest: +SKIP
    >>> genes = hs.tl.decode(predicted, scvi_model=model, adata=adata)  # doctest: +SKIP
    >>> genes.layers["normalized"].sum(axis=1)[:2]  # doctest: +SKIP
    array([10000., 10000.], dtype=float32)
    """
    import_scvi()
    inputs.check_adata(data)
    explicit_reference = adata is not None
    if adata is None:
        if SOURCE_COLUMN in data.obs:
            raise ValueError(
                f"data names its source cells (obs[{SOURCE_COLUMN!r}], written by predict): pass "
                "adata=, the AnnData they come from, for their library sizes and batches."
            )
        adata = data
    inputs.check_adata(adata)
    if use_rep is None:
        use_rep = str(data.uns.get(PREDICTION_KEY, {}).get("use_rep", "")) or DEFAULT_REP
    if use_rep not in data.obsm:
        raise KeyError(
            f"data.obsm[{use_rep!r}] is missing: pass use_rep= naming the obsm entry with the "
            f"latent states (present: {list(data.obsm.keys())})."
        )
    if isinstance(target_sum, bool) or not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(f"target_sum must be a positive number, got {target_sum!r}.")
    check_model(scvi_model)
    latent = check_latent(data.obsm[use_rep], int(scvi_model.module.n_latent),
                          f"data.obsm[{use_rep!r}]")
    decoder = ScviDecoder(scvi_model, adata, use_rep=use_rep, layer=layer, batch=batch)
    rows = _source_rows(data, adata, explicit_reference)
    frequencies, expected = decoder.decode(latent, rows, batch_size=batch_size)
    normalized = (frequencies * target_sum).astype(np.float32)
    result = AnnData(
        X=np.log1p(normalized) if log1p else normalized.copy(),
        obs=data.obs.copy(),
        var=pd.DataFrame(index=pd.Index(_model_genes(scvi_model))),
    )
    result.layers[NORMALIZED_LAYER] = normalized
    result.layers[EXPECTED_COUNTS_LAYER] = expected.astype(np.float32)
    result.obsm[use_rep] = latent
    result.uns[DECODE_KEY] = {
        "use_rep": use_rep, "n_latent": decoder.n_latent, "fingerprint": decoder.fingerprint,
        "layer": decoder.layer or "", "target_sum": float(target_sum), "log1p": bool(log1p),
        "batch": "" if batch is None else str(batch),
    }
    return result
