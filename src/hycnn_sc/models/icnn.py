"""Input Convex Neural Networks (Amos et al., 2017) and their common variants, as baselines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._docs import doc_params
from ._convex_base import POTENTIAL_SIZE_DOC, ConvexPotential
from ._options import Activation

#: Slope of ``leaky_relu`` for negative inputs (as in Makkuva et al. 2020 and CellOT).
NEGATIVE_SLOPE = 0.2

_ACTIVATIONS = {
    "relu": F.relu,
    "softplus": F.softplus,
    "leaky_relu": lambda x: F.leaky_relu(x, NEGATIVE_SLOPE),
}


def _leaky_slope(pre: torch.Tensor) -> torch.Tensor:
    """Derivative of ``leaky_relu(pre, NEGATIVE_SLOPE)`` (``NEGATIVE_SLOPE`` at 0, as torch's)."""
    return torch.where(pre > 0, 1.0, NEGATIVE_SLOPE).to(pre.dtype)


#: Derivatives of the activations (torch's conventions at 0), for the explicit gradient.
_SLOPES = {
    "relu": lambda pre: (pre > 0).to(pre.dtype),
    "softplus": torch.sigmoid,
    "leaky_relu": _leaky_slope,
}


@doc_params(potential_size=POTENTIAL_SIZE_DOC)
class ICNN(ConvexPotential):
    """Input Convex Neural Network ``z_{l+1} = σ(W_l z_l + A_l x + b_l)``, ``W_l ≥ 0``.

    One class covers the usual variants:

    * plain ICNN (``activation="relu"``, Amos et al. 2017);
    * smooth ICNN (``activation="softplus"``), whose gradient map is continuous;
    * the squared first layer of Makkuva et al. (2020) and CellOT (``quadratic=True``:
      ``z_1 = leaky_relu(A_0 x + b_0)²``, convex because it is a convex function of an
      affine map), usually with ``activation="leaky_relu"``;
    * zero-initialised input skips for layers ``l ≥ 1`` (``zero_skip_init=True``).

    Positive weights use the same softplus reparameterisation and moment-matching
    initialisation as :class:`~hycnn_sc.models.HyCNN`.

    Parameters
    ----------
    {potential_size}
    activation
        ``"relu"``, ``"softplus"`` or ``"leaky_relu"`` (all convex and non-decreasing).
    quadratic
        Square the first layer's (leaky-ReLU) activation.
    zero_skip_init
        Start the input skips of layers ``l ≥ 1`` at zero.
    n_models
        Number of independent potentials stored side by side.

    Examples
    --------
    >>> f = ICNN(in_features=3, hidden=(32, 32), activation="leaky_relu", quadratic=True)
    >>> f(torch.randn(4, 3)).shape
    torch.Size([4])
    """

    n_branches = 1

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (64, 64, 64, 64),
        activation: Activation = "relu",
        quadratic: bool = False,
        *,
        zero_skip_init: bool = False,
        n_models: int = 1,
        **kwargs,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}."
            )
        self.activation = activation
        self.quadratic = bool(quadratic)
        self._activation = _ACTIVATIONS[activation]
        super().__init__(
            in_features, hidden, n_models=n_models, zero_skip_init=zero_skip_init, **kwargs
        )

    @property
    def smooth(self) -> bool:
        """Only with ``activation="softplus"`` (ReLU and leaky ReLU have kinks)."""
        return self.activation == "softplus"

    def merge(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        if layer == 0 and self.quadratic:
            return F.leaky_relu(pre, NEGATIVE_SLOPE).square()
        return self._activation(pre)

    def merge_with_slope(self, pre: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == 0 and self.quadratic:
            leaky = F.leaky_relu(pre, NEGATIVE_SLOPE)
            return leaky.square(), 2.0 * leaky * _leaky_slope(pre)
        return self._activation(pre), _SLOPES[self.activation](pre)

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, activation={self.activation!r}"
        if self.quadratic:
            text += ", quadratic=True"
        if self.zero_skip_init:
            text += ", zero_skip_init=True"
        return text

