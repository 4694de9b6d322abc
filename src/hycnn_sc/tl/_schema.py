"""The storage schema of fitted maps in ``adata.uns[key]``: the one place that reads and writes it.

::

    adata.uns[key] = {
        "params": {                      # JSON-able, also readable by people
            "groupby", "source", "targets", "use_rep", "layer", "split_by",
            "model", "validation_fraction", "seed", "n_features",
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
            },
        },
        "evaluation": DataFrame,         # written by hycnn_sc.tl.evaluate
    }

Everything is str-keyed dicts, arrays, scalars and strings, so it survives
``write_h5ad``/``read_h5ad`` and maps are rebuilt without retraining and without pickles.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..models.transport import TransportMap

SCHEMA_VERSION = 1
_POTENTIALS = ("f", "g", "history")


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
        "state_json": json.dumps(state, default=_json_default),
        "center": arrays.pop("center"),
    }
    for group in _POTENTIALS:
        entry[group] = {
            name[len(group) + 1 :]: value for name, value in arrays.items() if name.startswith(group + "/")
        }
    return entry


def decode_map(entry: Any, *, device: str = "auto") -> TransportMap:
    """Rebuild a :class:`TransportMap` from :func:`encode_map` output (or its h5ad round trip)."""
    try:
        state = json.loads(str(entry["state_json"]))
        arrays = {"center": np.asarray(entry["center"])}
        for group in _POTENTIALS:
            for name, value in dict(entry[group]).items():
                arrays[f"{group}/{name}"] = np.asarray(value)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise ValueError(
            f"A stored map is incomplete or corrupted ({type(error).__name__}: {error}); "
            "run hycnn_sc.tl.fit_transport again."
        ) from None
    state["arrays"] = arrays
    return TransportMap.from_state(state, device=device)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_fitted(adata, key: str) -> dict[str, Any]:
    """``adata.uns[key]`` after checking it holds maps of this schema, with a helpful error."""
    if key not in adata.uns:
        raise KeyError(
            f"No fitted maps under adata.uns[{key!r}]: run hycnn_sc.tl.fit_transport(adata, ..., "
            f"key_added={key!r}) first."
        )
    stored = adata.uns[key]
    if not isinstance(stored, dict) or "params" not in stored or "maps" not in stored:
        raise ValueError(
            f"adata.uns[{key!r}] was not written by hycnn_sc.tl.fit_transport (missing 'params' "
            "or 'maps'); refit or pass the right key."
        )
    version = stored["params"].get("schema_version")
    if version is None or int(version) > SCHEMA_VERSION:
        raise ValueError(
            f"adata.uns[{key!r}] has schema_version {version!r}, this hycnn_sc reads up to "
            f"{SCHEMA_VERSION}; upgrade hycnn_sc or refit."
        )
    return stored


def find_maps(stored: dict[str, Any], target: str | None) -> dict[str, dict[str, Any]]:
    """Stored map entries for ``target`` (all targets when None), keyed by map id."""
    maps = stored["maps"]
    if target is None:
        return dict(maps)
    chosen = {mid: entry for mid, entry in maps.items() if str(entry["target"]) == str(target)}
    if not chosen:
        known = sorted({str(entry["target"]) for entry in maps.values()})
        raise KeyError(f"No map for target {target!r}; fitted targets are {known}.")
    return chosen
