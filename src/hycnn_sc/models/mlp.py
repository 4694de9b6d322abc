"""A plain multilayer perceptron: the non-convex regression baseline."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from .._validation import check_positive
from ._utils import check_hidden


class MLP(nn.Module):
    """Fully connected ReLU network ``R^d -> R`` (not convex; a baseline for regression).

    Parameters
    ----------
    in_features
        Input dimension.
    hidden
        Width of each hidden layer.

    Examples
    --------
    >>> MLP(5, hidden=(16, 16))(torch.randn(3, 5)).shape
    torch.Size([3])
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64, 64, 64)) -> None:
        super().__init__()
        check_positive(in_features, "in_features", integer=True)
        self.in_features = int(in_features)
        self.hidden = check_hidden(hidden)
        widths = [self.in_features, *self.hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.layers = nn.Sequential(*layers)

    @property
    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform weights (PyTorch's default for ``nn.Linear``), drawn from ``generator``."""
        with torch.no_grad():
            for module in self.layers:
                if isinstance(module, nn.Linear):
                    bound = 1.0 / module.in_features**0.5
                    for param in (module.weight, module.bias):
                        param.copy_(
                            torch.empty(param.shape).uniform_(-bound, bound, generator=generator)
                        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, hidden={self.hidden}"
