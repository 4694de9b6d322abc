"""The minimax semi-dual objective of Makkuva et al. (2020) for squared-distance OT.

For convex potentials ``f`` (source side) and ``g`` (target side),

    inner (on g):  min_g  E_ν[ f(∇g(y)) − ⟨y, ∇g(y)⟩ ]
    outer (on f):  min_f  E_μ f(x) − E_ν f(∇g(y))

At the optimum ``∇f`` is the Brenier map μ → ν and ``∇g = (∇f)^{-1}`` maps ν → μ.
All functions work on stacked ``[n_models, n, d]`` batches and return one loss per model,
so summing them trains the stacked models independently.
"""

from __future__ import annotations

import torch
from torch import nn

from ._convex_base import potential_gradient


def inner_objective(
    f: nn.Module, g: nn.Module, target_batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of the inner problem (per model) and ``∇g(y)`` (differentiable w.r.t. ``g``).

    Examples
    --------
    >>> from hycnn_sc.models import HyCNN
    >>> f, g = HyCNN(2, (8,), tau=1.0), HyCNN(2, (8,), tau=1.0)
    >>> loss, mapped = inner_objective(f, g, torch.randn(16, 2))
    >>> loss.shape, mapped.shape
    (torch.Size([]), torch.Size([16, 2]))
    """
    mapped = potential_gradient(g, target_batch, create_graph=True)
    loss = (f(mapped) - (target_batch * mapped).sum(-1)).mean(-1)
    return loss, mapped


def outer_objective(
    f: nn.Module, source_batch: torch.Tensor, mapped_target: torch.Tensor
) -> torch.Tensor:
    """Loss of the outer problem (per model); ``mapped_target = ∇g(y)``, detached.

    Both batches go through ``f`` as one batch (one pass, larger matrix products) when they
    have the same leading shape.
    """
    if source_batch.shape[:-2] != mapped_target.shape[:-2]:
        return f(source_batch).mean(-1) - f(mapped_target).mean(-1)
    values = f(torch.cat([source_batch, mapped_target], dim=-2))
    n_source = source_batch.shape[-2]
    return values[..., :n_source].mean(-1) - values[..., n_source:].mean(-1)


def dual_w2_squared(
    f: nn.Module, g: nn.Module, source: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Semi-dual estimate of ``W2²`` from the potentials (per model).

    ``W2² = E‖x‖² + E‖y‖² − 2 (E_μ f(x) + E_ν f*(y))`` with the convex conjugate evaluated
    through the inverse map, ``f*(y) ≈ ⟨y, ∇g(y)⟩ − f(∇g(y))``.
    """
    mapped = potential_gradient(g, target).detach()
    with torch.no_grad():
        conjugate = (target * mapped).sum(-1) - f(mapped)
        return (
            source.square().sum(-1).mean(-1)
            + target.square().sum(-1).mean(-1)
            - 2.0 * (f(source).mean(-1) + conjugate.mean(-1))
        )
