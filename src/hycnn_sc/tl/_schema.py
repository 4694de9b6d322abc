"""The storage schema of fitted maps in ``adata.uns[key]``: the one place that reads and writes it.

::

    adata.uns[key] = {
        "params": {                      # JSON-able, also readable by people
            "groupby", "source", "targets", "use_rep", "layer", "split_by", "groups",
            "conditional", "covariates", "combination_sep", "dose_key",
            "model", "holdout_fraction", "seed", "n_features",
            "schema_version", "versions": {package: version},
            "model_params_json",         # every TransportMap argument, as a JSON string
        },
        "var_names": ndarray[str],       # genes of the AnnData the maps were fitted on
        "representation": {              # what predict() checks new data against
            "source_mean", "source_std", # per-feature mean and std of the fitted source cells
            "pca_components", "pca_mean" # only when use_rep="X_pca" came from scanpy's pca
        },
        "maps": {
            "<map id>": {
                "target": str, "stratum": str ("" without split_by),
                "state_json": str,       # TransportMap metadata (format, params, fitted scalars)
                "f": {name: ndarray}, "g": {name: ndarray},   # potentials' weights
                "center": ndarray, "history": {name: ndarray},
                "linear": {name: ndarray},     # the linear part (means, matrices)
                "group_means": {"values": ndarray},  # "group"-frame maps only
            },
        },
        "conditional": {                 # conditional=True only: the one shared network
            "state_json": str, "arrays": {nested name: ndarray},
        },                               # (maps then hold target, stratum, context, dose)
        "evaluation": DataFrame,         # written by hycnn_sc.tl.evaluate
    }

Everything is str-keyed dicts, arrays, scalars and strings, so it survives
``write_h5ad``/``read_h5ad`` and maps are rebuilt without retraining and without pickles.
``params`` is read and written only through :class:`FitParams` (``""`` stands for ``None``;
uns written before the rename hold ``validation_fraction`` for ``holdout_fraction``), the
other entries through :func:`fitted_uns`, :func:`read_fitted` and the functions below.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from .._validation import json_default
from ..models._estimator import RENAMED_HISTORY, RENAMED_PARAMS
from ..models.conditional_transport import ConditionalTransportMap, FixedConditionMap
from ..models.transport import TransportMap

SCHEMA_VERSION = 1
#: Array groups of a stored map: the potentials' weights, the training history, the linear
#: part (``linear``) and the group means of ``"group"``-frame maps (``group_means``).
_ARRAY_GROUPS = ("f", "g", "history", "linear", "group_means")
#: ``uns[key]`` entries written by :func:`hycnn_sc.tl.evaluate` (without and with ``holdout=``).
EVALUATION = "evaluation"
EVALUATION_HOLDOUT = "evaluation_holdout"
#: ``obs`` column of :func:`hycnn_sc.tl.predict` output naming each prediction's source cell.
SOURCE_COLUMN = "source_cell"
#: ``uns`` entry of :func:`hycnn_sc.tl.predict` output (its ``key``, ``target``, ``use_rep``).
PREDICTION_KEY = "hycnn_prediction"
#: Packages whose versions a fit records.
_VERSIONED = ("hycnn-sc", "torch", "numpy", "anndata", "scanpy")


def installed_versions() -> dict[str, str]:
    """Versions of the packages a fit depends on (``"not installed"`` for missing ones)."""
    found = {}
    for package in _VERSIONED:
        try:
            found[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            found[package.replace("-", "_")] = "not installed"
    return found


def _optional(value: str | None) -> str:
    return "" if value is None else str(value)


@dataclass
class FitParams:
    """The arguments of a fit, as ``adata.uns[key]['params']`` stores them (typed, decoded).

    :meth:`to_uns` writes the stored dict (``None`` as ``""``, lists as object arrays, the
    estimator arguments as the JSON string ``model_params_json``; the conditional entries only
    for conditional fits); :meth:`from_uns` reads it back, also from an AnnData written before
    ``validation_fraction`` was renamed ``holdout_fraction`` (and the estimator's
    ``validation_fraction``/``validation_every`` ``selection_fraction``/``selection_every``).
    """

    groupby: str
    source: str
    targets: list[str]
    use_rep: str | None
    layer: str | None
    model: str = "hycnn"
    split_by: str | None = None
    groups: str | None = None
    holdout_fraction: float = 0.0
    seed: int = 0
    n_features: int = 0
    #: Every estimator argument (``TransportMap`` or ``ConditionalTransportMap``).
    model_params: dict[str, Any] = field(default_factory=dict)
    conditional: bool = False
    covariates: list[str] = field(default_factory=list)
    combination_sep: str = "+"
    dose_key: str | None = None
    schema_version: int = SCHEMA_VERSION
    versions: dict[str, str] = field(default_factory=installed_versions)

    @property
    def strata_columns(self) -> list[str]:
        """``obs`` columns naming a cell's stratum (see :func:`cell_strata`)."""
        return [self.split_by] if self.split_by else list(self.covariates)

    def to_uns(self) -> dict[str, Any]:
        """The ``params`` dict stored in ``uns`` (h5ad-writable)."""
        stored: dict[str, Any] = {
            "source": str(self.source),
            "targets": np.asarray(self.targets, dtype=object),
            "use_rep": _optional(self.use_rep),
            "layer": _optional(self.layer),
            "split_by": _optional(self.split_by),
            "groups": _optional(self.groups),
            "holdout_fraction": float(self.holdout_fraction),
            "seed": int(self.seed),
            "n_features": int(self.n_features),
            "schema_version": int(self.schema_version),
            "versions": dict(self.versions),
            "model_params_json": json.dumps(
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model_params.items()}
            ),
        }
        if self.conditional:
            stored.update(conditional=True, covariates=np.asarray(self.covariates, dtype=object),
                          combination_sep=str(self.combination_sep),
                          dose_key=_optional(self.dose_key))
        stored.update(groupby=str(self.groupby), model=str(self.model))
        return stored

    @classmethod
    def from_uns(cls, stored: Mapping[str, Any]) -> FitParams:
        """Decode a stored ``params`` dict (as written, or after ``read_h5ad``)."""

        def text(name: str) -> str | None:
            return str(stored.get(name, "")) or None

        def labels(name: str) -> list[str]:
            return [str(v) for v in np.atleast_1d(np.asarray(stored.get(name, []), dtype=object))]

        holdout = stored.get("holdout_fraction", stored.get("validation_fraction", 0.0))
        return cls(
            groupby=str(stored["groupby"]),
            source=str(stored["source"]),
            targets=labels("targets"),
            use_rep=text("use_rep"),
            layer=text("layer"),
            model=str(stored.get("model", "hycnn")),
            split_by=text("split_by"),
            groups=text("groups"),
            holdout_fraction=float(holdout),
            seed=int(stored.get("seed", 0)),
            n_features=int(stored.get("n_features", 0)),
            # to_uns wrote tuples (hidden, betas) as JSON lists: turn them back
            model_params={RENAMED_PARAMS.get(name, name): tuple(value) if isinstance(value, list)
                          else value for name, value
                          in json.loads(str(stored.get("model_params_json", "{}"))).items()},
            conditional=bool(stored.get("conditional", False)),
            covariates=labels("covariates"),
            combination_sep=str(stored.get("combination_sep", "+")),
            dose_key=text("dose_key"),
            schema_version=int(stored.get("schema_version", SCHEMA_VERSION)),
            versions={str(k): str(v) for k, v in dict(stored.get("versions", {})).items()},
        )


def fitted_uns(params: FitParams, *, var_names: Any, source_values: np.ndarray,
               projection: tuple[np.ndarray, np.ndarray] | None, maps: dict[str, Any],
               conditional: ConditionalTransportMap | None = None) -> dict[str, Any]:
    """``uns[key_added]`` of a fit: its params, genes, representation summary and maps.

    ``source_values`` are the fitted source cells (their per-feature mean and std let predict
    check new cells); ``projection`` the scanpy PCA loadings and centre, if any; ``maps`` the
    entries of :func:`encode_map` (or of a conditional fit, with its shared ``conditional``).
    """
    representation = {"source_mean": source_values.mean(axis=0),
                      "source_std": source_values.std(axis=0)}
    if projection is not None:
        representation.update(pca_components=projection[0], pca_mean=projection[1])
    stored: dict[str, Any] = {
        "params": params.to_uns(),
        "var_names": np.asarray(var_names, dtype=object),
        "representation": representation,
        "maps": maps,
    }
    if conditional is not None:
        stored["conditional"] = encode_conditional(conditional)
    return stored


def fitted_genes(stored: Mapping[str, Any]) -> np.ndarray:
    """The ``var_names`` the maps were fitted on."""
    return np.asarray(stored["var_names"]).astype(str)


def source_summary(stored: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of the fitted source cells (float64)."""
    representation = stored["representation"]
    return (np.asarray(representation["source_mean"], dtype=np.float64),
            np.asarray(representation["source_std"], dtype=np.float64))


def pca_projection(stored: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The scanpy PCA loadings (genes × components) and centre behind ``use_rep``, or None."""
    representation = stored["representation"]
    if "pca_components" not in representation:
        return None
    return (np.asarray(representation["pca_components"], dtype=np.float32),
            np.asarray(representation["pca_mean"], dtype=np.float32))


def stored_history(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A stored map's training history under the current names (older files: ``validation_*``)."""
    return {RENAMED_HISTORY.get(name, name): value for name, value in entry["history"].items()}


def pca_genes(stored: Mapping[str, Any]) -> np.ndarray | None:
    """Indices of the genes with non-zero PCA loadings (scanpy PCA fits only, else None)."""
    projection = pca_projection(stored)
    if projection is None:
        return None
    return np.flatnonzero(np.abs(projection[0]).sum(axis=1) > 0)


def stored_conditional(stored: Mapping[str, Any], *, device: str = "auto") -> ConditionalTransportMap:
    """The shared :class:`ConditionalTransportMap` of a conditional fit."""
    return decode_conditional(stored["conditional"], device=device)


def fitted_scalars(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fitted scalars (``best_iteration_``, ``converged_``, ...) of a stored map, or ``{}``."""
    try:
        return dict(json.loads(str(entry["state_json"])).get("fitted", {}))
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def map_label(entry: Mapping[str, Any]) -> tuple[str, str]:
    """The ``(target, stratum)`` of a stored map entry."""
    return str(entry["target"]), str(entry["stratum"])


def previous_targets(value: Any) -> list[str]:
    """Targets of an earlier fit held in ``value`` (an ``uns`` entry), or ``[]``."""
    if not isinstance(value, Mapping) or not isinstance(value.get("params"), Mapping):
        return []
    return [str(t) for t in np.asarray(value["params"].get("targets", []), dtype=object).ravel()]


def obsm_key(key: str, target: str) -> str:
    """The ``obsm`` key of one target's predictions (``/`` is not allowed in h5ad keys)."""
    return f"{key}_{target}".replace("/", "_")


def cell_strata(adata, columns: Sequence[str]) -> np.ndarray:
    """The stratum of every cell, as stored map entries name it.

    ``columns`` is :attr:`FitParams.strata_columns`: ``[split_by]`` for maps fitted per
    stratum, the covariates of a conditional fit (values joined by ``"|"``), else empty (every
    cell's stratum is ``""``).
    """
    columns = list(columns)
    if not columns:
        return np.full(adata.n_obs, "", dtype=object)
    missing = [c for c in columns if c not in adata.obs]
    if missing:
        raise KeyError(
            f"obs{missing} is missing: the maps were fitted per value of {columns}; add the "
            "column(s) to the cells (each cell goes through the map of its stratum)."
        )
    parts = [adata.obs[c].astype(str).to_numpy() for c in columns]
    return np.asarray(["|".join(values) for values in zip(*parts, strict=True)], dtype=object)


#: Values of the :func:`split_key` column: training cells, cells held out for evaluate.
TRAIN, HELD_OUT = "train", "held_out"


def split_key(key: str) -> str:
    """The ``obs`` column marking the fitted cells as :data:`TRAIN` or :data:`HELD_OUT`."""
    return f"{key}_split"


def map_id(target: str, stratum: str | None) -> str:
    """Key of one map in ``uns[key]['maps']``: h5-safe (no ``/``), readable."""
    name = str(target) if not stratum else f"{target}|{stratum}"
    return re.sub(r"[/]", "_", name)


def encode_map(tmap: TransportMap, target: str, stratum: str | None) -> dict[str, Any]:
    """A fitted :class:`TransportMap` as the nested plain dict stored per map."""
    state = tmap.get_state()
    arrays = state.pop("arrays")
    entry: dict[str, Any] = {
        "target": str(target),
        "stratum": "" if stratum is None else str(stratum),
        "state_json": json.dumps(state, default=json_default),
        "center": arrays.pop("center"),
    }
    for group in _ARRAY_GROUPS:
        entry[group] = {
            name[len(group) + 1 :]: value for name, value in arrays.items() if name.startswith(group + "/")
        }
    return entry


def encode_conditional(cmap: ConditionalTransportMap) -> dict[str, Any]:
    """A fitted :class:`ConditionalTransportMap` as a nested plain dict (``uns[key]['conditional']``).

    ``{"state_json": str, "arrays": {...}}``; array names such as ``"f/potential/x"`` become
    nested dicts (h5ad keys cannot hold ``/``).
    """
    state = cmap.get_state()
    nested: dict[str, Any] = {}
    for name, value in state.pop("arrays").items():
        *parents, leaf = name.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"state_json": json.dumps(state, default=json_default), "arrays": nested}


def decode_conditional(stored: Any, *, device: str = "auto") -> ConditionalTransportMap:
    """Rebuild the :class:`ConditionalTransportMap` of :func:`encode_conditional` output."""
    arrays: dict[str, np.ndarray] = {}

    def flatten(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                flatten(value, f"{prefix}{key}/")
            else:
                arrays[f"{prefix}{key}"] = np.asarray(value)

    try:
        state = json.loads(str(stored["state_json"]))
        flatten(stored["arrays"], "")
        state["arrays"] = arrays
        return ConditionalTransportMap.from_state(state, device=device)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        detail = " ".join(str(error).split()).split(". It is truncated")[0]
        raise ValueError(
            f"The stored conditional map is incomplete or corrupted ({type(error).__name__}: "
            f"{detail}); run hycnn_sc.tl.fit_transport(..., conditional=True) again."
        ) from None


def decode_map(entry: Any, *, device: str = "auto",
               name: str = "") -> TransportMap | FixedConditionMap:
    """Rebuild a :class:`TransportMap` from :func:`encode_map` output (or its h5ad round trip).

    An entry of a conditional fit (as returned by :func:`find_maps`) gives the
    :class:`~hycnn_sc.models.conditional_transport.FixedConditionMap` of its condition.
    """
    which = f"Stored map {name!r}" if name else "A stored map"
    if isinstance(entry, Mapping) and "conditional" in entry:
        dose = float(entry["dose"])
        cache = entry.get("_decoded", {})
        if device not in cache:
            cache[device] = decode_conditional(entry["_parent"], device=device)
        return cache[device].at(
            str(entry["target"]), [str(v) for v in np.asarray(entry["context"]).ravel()],
            None if dose != dose else dose,
        )

    def broken(error: Exception) -> ValueError:
        detail = " ".join(str(error).split())  # one line, whatever the source's formatting
        # TransportMap.from_state wraps its cause in its own advice; keep only the cause.
        detail = detail.removeprefix("Cannot rebuild a TransportMap from this state: ")
        detail = detail.split(". It is truncated")[0].rstrip(" .")
        return ValueError(
            f"{which} is incomplete or corrupted ({type(error).__name__}: {detail}); it was "
            "truncated or modified after fitting: run hycnn_sc.tl.fit_transport again."
        )

    try:
        state = json.loads(str(entry["state_json"]))
        arrays = {"center": np.asarray(entry["center"])}
        for group in _ARRAY_GROUPS:
            if group not in entry and group in ("linear", "group_means"):
                continue  # maps stored before these existed
            for key, value in dict(entry[group]).items():
                arrays[f"{group}/{key}"] = np.asarray(value)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise broken(error) from None
    if not isinstance(state, dict):
        raise broken(TypeError("state_json is not a JSON object"))
    state["arrays"] = arrays
    try:
        return TransportMap.from_state(state, device=device)
    except (KeyError, TypeError, ValueError) as error:  # some fitted scalars are read unguarded
        raise broken(error) from None


#: Entries of ``params`` that predict and evaluate rely on.
REQUIRED_PARAMS = ("groupby", "source", "use_rep", "layer", "split_by", "model", "n_features")


def read_fitted(adata, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` after checking it holds maps of this schema, with a helpful error."""
    if not isinstance(key, str):
        raise TypeError(f"key must be the key_added of fit_transport (a str), got {key!r}.")
    if key not in adata.uns:
        fitted = [k for k, v in adata.uns.items() if _looks_fitted(v)]
        raise KeyError(
            f"No fitted maps under adata.uns[{key!r}]: run hycnn_sc.tl.fit_transport(adata, ..., "
            f"key_added={key!r}) first" + (f" (fitted keys here: {fitted})." if fitted else ".")
        )
    stored = adata.uns[key]
    if not _looks_fitted(stored):
        raise ValueError(
            f"adata.uns[{key!r}] was not written by hycnn_sc.tl.fit_transport (no 'params' and "
            "'maps' entries); pass the key_added used at fit time, or refit."
        )
    params = stored["params"]
    version = params.get("schema_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        version = None
    if version is None or version > SCHEMA_VERSION:
        raise ValueError(
            f"adata.uns[{key!r}] has schema_version {params.get('schema_version')!r}, this "
            f"hycnn_sc reads up to {SCHEMA_VERSION}; upgrade hycnn_sc or refit with "
            "hycnn_sc.tl.fit_transport."
        )
    missing = [name for name in REQUIRED_PARAMS if name not in params]
    representation = stored.get("representation")
    if not isinstance(representation, Mapping) or "source_std" not in representation:
        missing.append("representation/source_std")
    if "var_names" not in stored:
        missing.append("var_names")
    if missing or not isinstance(stored["maps"], Mapping) or not stored["maps"]:
        raise ValueError(
            f"adata.uns[{key!r}] is incomplete or was modified (missing {missing or ['maps']}); "
            "refit with hycnn_sc.tl.fit_transport."
        )
    return stored


def fit_params(stored: Mapping[str, Any]) -> FitParams:
    """The :class:`FitParams` of ``uns[key]`` (as returned by :func:`read_fitted`)."""
    return FitParams.from_uns(stored["params"])


def _looks_fitted(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("params"), Mapping)
        and "maps" in value
    )


def find_maps(stored: dict[str, Any], target: str | None) -> dict[str, dict[str, Any]]:
    """Stored map entries for ``target`` (all targets when None), keyed by map id."""
    maps = stored["maps"]
    for mid, entry in maps.items():
        if not isinstance(entry, Mapping) or "target" not in entry or "stratum" not in entry:
            raise ValueError(
                f"Stored map {mid!r} is incomplete or was modified; refit with "
                "hycnn_sc.tl.fit_transport."
            )
    if "conditional" in stored:  # entries of a conditional fit share one network
        shared = stored["conditional"]
        decoded: dict[str, ConditionalTransportMap] = {}  # one rebuild for all entries
        maps = {mid: {**entry, "_parent": shared, "_decoded": decoded,
                      "state_json": shared["state_json"],
                      "history": shared["arrays"]["history"]}
                for mid, entry in maps.items()}
    if target is None:
        return dict(maps)
    chosen = {mid: entry for mid, entry in maps.items() if map_label(entry)[0] == str(target)}
    if not chosen:
        raise KeyError(
            f"No map for target {target!r}; fitted targets are {fitted_targets(stored)}. "
            "Fit it with hycnn_sc.tl.fit_transport(..., target=...) first."
        )
    return chosen


def fitted_targets(stored: dict[str, Any]) -> list[str]:
    """Target labels with at least one stored map, sorted."""
    return sorted({map_label(entry)[0] for entry in stored["maps"].values()})
