"""Convex potentials, estimators and trainers: a plain PyTorch + numpy library (no AnnData).

Networks
    :class:`HyCNN`, :class:`ICNN`, :class:`MLP` (baseline), :class:`ConvexPotential` (base),
    :class:`ConditionalHyCNN`, :class:`ConditionalICNN` (convex in ``x`` for every condition),
    :func:`potential_gradient`, :func:`smooth_max`
Estimators
    :class:`ConvexRegressor`, :class:`TransportMap`, :class:`ConditionalTransportMap`,
    :class:`GaussianTransportMap`
Objective
    :mod:`hycnn_sc.models.objectives` (Makkuva et al. minimax semi-dual)
"""

from ._convex_base import ConvexPotential, potential_gradient
from .conditional import ConditionalHyCNN, ConditionalICNN, ConditionalPotential
from .conditional_transport import ConditionalTransportMap
from .gaussian import GaussianTransportMap, gaussian_transport_matrix
from .hycnn import HyCNN, smooth_max
from .icnn import ICNN
from .mlp import MLP
from .regressor import ConvexRegressor
from .transport import TransportMap

__all__ = [
    "ICNN",
    "MLP",
    "ConditionalHyCNN",
    "ConditionalICNN",
    "ConditionalPotential",
    "ConditionalTransportMap",
    "ConvexPotential",
    "ConvexRegressor",
    "GaussianTransportMap",
    "HyCNN",
    "TransportMap",
    "gaussian_transport_matrix",
    "potential_gradient",
    "smooth_max",
]
