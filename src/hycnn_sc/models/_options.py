"""The string options of the models as ``Literal`` types, each defined once.

Signatures use the types; the checks use the value tuples derived from them, so an option is
added in one place.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Convex potentials trained by the transport maps.
Potential = Literal["hycnn", "icnn"]
#: Networks of :class:`~hycnn_sc.models.ConvexRegressor` (``"mlp"``: a non-convex baseline).
RegressorModel = Literal["hycnn", "icnn", "mlp"]
#: Warm starts of the minimax (or ``None``).
WarmStart = Literal["gaussian", "identity"]
#: Gate-temperature schedules of HyCNN (or ``None``, the same as ``"constant"``).
TauSchedule = Literal["constant", "cosine", "cosine_restarts"]
#: Learning-rate schedules of :class:`~hycnn_sc.models.ConvexRegressor` (or ``None``).
LRSchedule = Literal["cosine"]
#: Activations of :class:`~hycnn_sc.models.ICNN`.
Activation = Literal["relu", "softplus", "leaky_relu"]
#: Coordinates of a transport map's linear part (``"auto"``: chosen from the data).
Frame = Literal["auto", "global", "group", "within"]
#: Covariance estimators of :class:`~hycnn_sc.models.GaussianTransportMap`.
Covariance = Literal["empirical", "ledoit_wolf"]
#: A number, or ``"auto"``: chosen on held-out data.
Auto = Literal["auto"]

REGRESSOR_MODELS: tuple[str, ...] = get_args(RegressorModel)
WARM_STARTS: tuple[str | None, ...] = (*get_args(WarmStart), None)
TAU_SCHEDULES: tuple[str | None, ...] = (None, *get_args(TauSchedule))
LR_SCHEDULES: tuple[str | None, ...] = (*get_args(LRSchedule), None)
FRAME_OPTIONS: tuple[str, ...] = get_args(Frame)
COVARIANCES: tuple[str, ...] = get_args(Covariance)
