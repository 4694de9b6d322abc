"""The Hyper Input Convex Neural Network (HyCNN) potential."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._validation import check_positive
from ._convex_base import ConvexPotential


def smooth_max(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """The HyCNN gate ``σ_τ(a, b) = τ log(e^{a/τ} + e^{b/τ})``; ``max(a, b)`` for ``τ = 0``.

    Convex and non-decreasing in both arguments for every ``τ >= 0``, and
    ``max(a, b) <= σ_τ(a, b) <= max(a, b) + τ log 2``.

    Examples
    --------
    >>> smooth_max(torch.tensor([0.0]), torch.tensor([1.0]), 0.0)
    tensor([1.])
    """
    # Written as b + relu(a - b) and b + τ softplus((a - b) / τ): the same functions as
    # max and τ·logsumexp, but with a backward pass several times cheaper than torch.maximum's.
    if tau == 0.0:
        return b + F.relu(a - b)
    return b + tau * F.softplus((a - b) / tau)


class HyCNN(ConvexPotential):
    """Hyper Input Convex Neural Network (Hundrieser, Kong & Schmidt-Hieber, 2026).

    Each block runs two input-convex branches and merges them with a two-argument gate::

        z_1     = σ_τ(A¹_0 x + b¹_0,  A²_0 x + b²_0)
        z_{l+1} = σ_τ(V¹_l z_l + A¹_l x + b¹_l,  V²_l z_l + A²_l x + b²_l)
        f(x)    = v_outᵀ z_L + a_outᵀ x + c

    with ``V ≥ 0`` and ``v_out ≥ 0`` (softplus of raw weights) and free ``A``, ``b``. Because
    both branches see ``x``, the number of linear pieces can double per layer, which is why
    HyCNNs approximate quadratics with exponentially fewer parameters than ICNNs.
    The output is convex in ``x`` for every parameter value.

    Parameters
    ----------
    in_features
        Input dimension ``d``.
    hidden
        Width of each block (the number of blocks is ``len(hidden)``).
    tau
        Gate temperature: ``0`` is the hard ``max`` gate (a piecewise-linear ``f``), ``τ > 0``
        the smooth ``τ·logsumexp`` gate (a ``C^∞`` potential, needed for a continuous map
        ``∇f``). Can be changed at any time, e.g. by a schedule during training.
    n_models
        Number of independent potentials stored side by side (see :class:`ConvexPotential`).
    **kwargs
        ``skip_variance`` and ``zero_skip_init``, passed to :class:`ConvexPotential`.

    Notes
    -----
    Initialisation: moment matching for positive weights after Hoedt & Klambauer (2023),
    see :meth:`ConvexPotential.reset_parameters`.

    Examples
    --------
    >>> f = HyCNN(in_features=2, hidden=(16, 16), tau=0.5)
    >>> f(torch.randn(10, 2)).shape
    torch.Size([10])
    """

    n_branches = 2

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (48, 48, 48, 48),
        tau: float = 0.0,
        *,
        n_models: int = 1,
        **kwargs,
    ) -> None:
        self.tau = tau
        super().__init__(in_features, hidden, n_models=n_models, **kwargs)

    @property
    def smooth(self) -> bool:
        """``τ > 0``: the soft gate is smooth; ``τ = 0`` is the max, with kinks."""
        return self._tau > 0.0

    @property
    def tau(self) -> float:
        """Gate temperature (``0`` = hard max)."""
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        check_positive(value, "tau", allow_zero=True)
        self._tau = float(value)

    def merge(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        first, second = pre.chunk(2, dim=-1)
        return smooth_max(first, second, self._tau)

    def merge_with_slope(self, pre: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = pre.chunk(2, dim=-1)
        difference = first - second
        if self._tau == 0.0:  # smooth_max's two forms, sharing the difference with the slope
            return second + F.relu(difference), (difference > 0).to(pre.dtype)
        scaled = difference / self._tau
        return second + self._tau * F.softplus(scaled), torch.sigmoid(scaled)

    def merge_backward(self, slope: torch.Tensor, upstream: torch.Tensor, layer: int) -> torch.Tensor:
        to_first = upstream * slope
        return torch.cat([to_first, upstream - to_first], dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self._tau}"
