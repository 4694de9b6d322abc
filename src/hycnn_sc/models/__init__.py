"""Convex potentials, estimators and trainers: a plain PyTorch + numpy library (no AnnData).

Networks
    :class:`HyCNN`, :class:`ICNN`, :class:`MLP`, :func:`potential_gradient`
Estimators
    :class:`ConvexRegressor`, :class:`TransportMap`, :class:`GaussianTransportMap`
"""

from ._convex_base import ConvexPotential, potential_gradient
from .hycnn import HyCNN, smooth_max
from .icnn import ICNN
from .mlp import MLP

__all__ = ["HyCNN", "ICNN", "MLP", "ConvexPotential", "potential_gradient", "smooth_max"]
