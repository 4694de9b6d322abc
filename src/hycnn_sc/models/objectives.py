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

from ._convex_base import potential_gradient, potential_value_and_gradient

#: Gradient-ascent steps of :func:`conjugate_values` (held-out checks only, not training steps).
CONJUGATE_STEPS = 50


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


def conjugate_values(
    f: nn.Module, target: torch.Tensor, start: torch.Tensor, steps: int = CONJUGATE_STEPS
) -> torch.Tensor:
    """Lower bounds of the convex conjugate ``f*(y) = max_x ⟨x, y⟩ − f(x)``, row by row.

    Safeguarded gradient ascent from ``start`` (e.g. ``∇g(y)``, the amortised maximiser):
    a step ``x ← x − η (∇f(x) − y)`` is kept only in rows where it raises ``⟨x, y⟩ − f(x)``;
    each row's ``η`` (from 1) grows by 1.2 after a kept step and halves after a rejected one.
    The values therefore never fall below those at ``start``, never exceed ``f*(y)``, and
    approach it with the steps (geometrically for a strongly convex, smooth ``f``). Works on
    stacked ``[n_models, n, d]`` inputs.

    Examples
    --------
    >>> from hycnn_sc.models import HyCNN
    >>> f = HyCNN(2, (8,), tau=1.0)
    >>> y = torch.randn(5, 2)
    >>> start = torch.zeros(5, 2)
    >>> bool((conjugate_values(f, y, start) >= -f(start)).all())
    True
    """
    x = start.detach()
    values, gradient = potential_value_and_gradient(f, x)
    best = (x * target).sum(-1) - values
    step = torch.ones_like(best)
    for _ in range(steps):
        candidate = x - step.unsqueeze(-1) * (gradient - target)
        values, candidate_gradient = potential_value_and_gradient(f, candidate)
        new = (candidate * target).sum(-1) - values
        better = new > best
        x = torch.where(better.unsqueeze(-1), candidate, x)
        gradient = torch.where(better.unsqueeze(-1), candidate_gradient, gradient)
        best = torch.where(better, new, best)
        step = torch.where(better, step * 1.2, step * 0.5)
    return best
