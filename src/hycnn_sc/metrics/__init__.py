"""Metrics comparing predicted and observed cell populations.

All functions accept numpy arrays or torch tensors of shape ``[n_cells, n_features]``. Numpy
input returns a Python float (computed in float64); torch input returns a 0-d tensor on the
same device, so the metrics can be used inside a GPU training loop.

- :func:`energy_distance` and :func:`mmd` compare whole distributions.
- :func:`r2_mean` and :func:`signature_l2` compare mean expression profiles.
"""

from ._distances import energy_distance, mmd
from ._expression import r2_mean, signature_l2

__all__ = ["energy_distance", "mmd", "r2_mean", "signature_l2"]
