"""Build potentials by name: the one place that maps ``model="hycnn"`` to a class."""

from __future__ import annotations

from collections.abc import Sequence

from ._convex_base import ConvexPotential
from .hycnn import HyCNN
from .icnn import ICNN

POTENTIALS: dict[str, type[ConvexPotential]] = {"hycnn": HyCNN, "icnn": ICNN}
DEFAULT_HIDDEN = {"hycnn": (48, 48, 48, 48), "icnn": (64, 64, 64, 64), "mlp": (64, 64, 64, 64)}


def check_model_name(model: str, allowed: Sequence[str]) -> None:
    """Raise a ValueError when ``model`` is not one of ``allowed``."""
    if model not in allowed:
        raise ValueError(f"Unknown model {model!r}; choose one of {list(allowed)}.")


def build_potential(
    model: str,
    in_features: int,
    hidden: Sequence[int],
    *,
    tau: float | None,
    n_models: int = 1,
    network_kwargs: dict | None = None,
) -> ConvexPotential:
    """Instantiate the convex potential called ``model`` (``"hycnn"`` or ``"icnn"``)."""
    check_model_name(model, tuple(POTENTIALS))
    kwargs = dict(network_kwargs or {})
    if model == "hycnn":
        kwargs["tau"] = 0.0 if tau is None else tau
    elif tau not in (None, 0, 0.0):
        raise ValueError(f"tau={tau!r} only applies to model='hycnn'; leave tau=None for {model!r}.")
    try:
        return POTENTIALS[model](in_features, hidden, n_models=n_models, **kwargs)
    except TypeError as error:
        raise TypeError(f"Invalid network_kwargs {network_kwargs!r} for model={model!r}: {error}") from None
