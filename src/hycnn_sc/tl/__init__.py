"""Tools on AnnData: fit perturbation maps, predict perturbed cells, evaluate against held-out cells.

A thin adapter: validate inputs, pull arrays out of AnnData, call :mod:`hycnn_sc.models`,
write results back (schema in :mod:`hycnn_sc.tl._schema`).
"""

from ._decode import decode, scvi_latent
from ._evaluate import evaluate
from ._fit import fit_transport
from ._predict import predict, transport_map

__all__ = ["decode", "evaluate", "fit_transport", "predict", "scvi_latent", "transport_map"]
