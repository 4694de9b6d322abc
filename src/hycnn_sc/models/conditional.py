"""Partially input-convex potentials ``f(x, c)``: convex in the cell state ``x`` for every condition ``c``.

A free network of the condition (an MLP) emits, for each condition vector ``c``, a
modulation of a :class:`~hycnn_sc.models.HyCNN` or :class:`~hycnn_sc.models.ICNN`: bias shifts
of every pre-activation, positive scales of every non-negative z-path weight and of the
output's z-term, and the output's linear term ``a(c)ᵀx`` (see
:meth:`~hycnn_sc.models.ConvexPotential.forward`). Each ``f(·, c)`` is therefore a HyCNN (or
ICNN) in ``x``, convex by construction, while its dependence on ``c`` is arbitrary (Amos et
al. 2017, partially input-convex networks; Bunne et al. 2022, CondOT). The linear term also
comes from ``c`` through a linear map only, so for conditions encoded as sums (a
combination ``A+B`` as ``e_A + e_B``) that term is additive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._docs import doc_params
from .._validation import check_positive
from ._convex_base import ConvexPotential
from ._utils import check_hidden
from .hycnn import HyCNN
from .icnn import ICNN


class ConditionalPotential(nn.Module):
    """A convex potential in ``x`` whose layers are modulated by a condition vector ``c``.

    Parameters
    ----------
    body
        The convex potential that is modulated (``n_models`` must be 1).
    condition_features
        Length of the condition vector ``c``.
    condition_hidden
        Widths of the condition MLP (SiLU activations) that emits the bias shifts and scales;
        the output's linear term ``a(c) = W c`` is linear in ``c``. Both start at zero, so at
        initialisation ``f(·, c) = body`` for every ``c``.

    Examples
    --------
    >>> f = ConditionalPotential(HyCNN(3, (8, 8), tau=0.5), condition_features=4)
    >>> f(torch.randn(10, 3), torch.randn(4)).shape
    torch.Size([10])
    >>> f(torch.randn(2, 10, 3), torch.randn(2, 4)).shape
    torch.Size([2, 10])
    """

    def __init__(self, body: ConvexPotential, condition_features: int,
                 condition_hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        if body.n_models != 1:
            raise ValueError(f"The modulated body must have n_models=1, got {body.n_models}.")
        check_positive(condition_features, "condition_features", integer=True)
        self.body = body
        self.condition_features = int(condition_features)
        self.condition_hidden = check_hidden(condition_hidden) if len(condition_hidden) else ()
        layers: list[nn.Module] = []
        width = self.condition_features
        for out in self.condition_hidden:
            layers += [nn.Linear(width, out), nn.SiLU()]
            width = out
        head = nn.Linear(width, sum(body.modulation_sizes) - body.in_features)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.condition_net = nn.Sequential(*layers, head)
        self.direct_linear = nn.Linear(self.condition_features, body.in_features, bias=False)
        nn.init.zeros_(self.direct_linear.weight)

    @property
    def in_features(self) -> int:
        """Dimension of ``x``."""
        return self.body.in_features

    @property
    def tau(self) -> float | None:
        """Gate temperature of a HyCNN body (``None`` for an ICNN body)."""
        return getattr(self.body, "tau", None)

    @tau.setter
    def tau(self, value: float) -> None:
        self.body.tau = value

    @property
    def full_quadratic(self) -> bool:
        """Whether the body has a full quadratic term (never modulated)."""
        return self.body.full_quadratic

    @property
    def n_params(self) -> int:
        """Trainable parameters (body and condition network)."""
        return sum(p.numel() for p in self.parameters())

    def modulation(self, condition: torch.Tensor) -> torch.Tensor:
        """Raw modulation ``[m, sum(body.modulation_sizes)]`` of conditions ``[m, c]``."""
        return torch.cat([self.condition_net(condition), self.direct_linear(condition)], -1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``f(x, c)``.

        Parameters
        ----------
        x
            ``[n, d]`` points with one condition ``[c]`` (or ``[1, c]``), or ``[m, n, d]`` with
            one condition per leading index ``[m, c]``.
        condition
            Condition vector(s).

        Returns
        -------
        ``[n]`` or ``[m, n]``.
        """
        x, condition, single = self._batched(x, condition)
        out = self.body(x, self.modulation(condition))
        return out.squeeze(0) if single else out

    def value_and_gradient(
        self, x: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x, c)`` and ``∇ₓf(x, c)`` by the body's explicit chain rule.

        See :meth:`ConvexPotential.value_and_gradient`; shapes as :meth:`forward`, the
        gradient shaped as ``x``.

        Examples
        --------
        >>> f = ConditionalHyCNN(3, condition_features=2, hidden=(8, 8))
        >>> values, gradient = f.value_and_gradient(torch.randn(5, 3), torch.randn(2))
        >>> values.shape, gradient.shape
        (torch.Size([5]), torch.Size([5, 3]))
        """
        x, condition, single = self._batched(x, condition)
        values, gradient = self.body.value_and_gradient(x, self.modulation(condition))
        return (values.squeeze(0), gradient.squeeze(0)) if single else (values, gradient)

    def _batched(self, x: torch.Tensor, condition: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Check shapes; ``x`` as ``[m, n, d]``, conditions as ``[m, c]``, and whether ``x`` was 2-D."""
        if condition.shape[-1] != self.condition_features:
            raise ValueError(
                f"Expected condition vectors of length {self.condition_features}, got shape "
                f"{tuple(condition.shape)}."
            )
        single = x.dim() == 2
        condition = condition.reshape(-1, self.condition_features)
        if single:
            x = x.unsqueeze(0)
        if condition.shape[0] != x.shape[0]:
            raise ValueError(
                f"{x.shape[0]} point batch(es) for {condition.shape[0]} condition(s): pass one "
                "condition per leading index of x."
            )
        return x, condition, single


#: The size parameters of the conditional potentials, for docstrings.
CONDITIONAL_SIZE_DOC = ("in_features\n    Dimension of ``x``.\n"
                        "condition_features\n    Length of the condition vector.")


@doc_params(conditional_size=CONDITIONAL_SIZE_DOC)
class ConditionalHyCNN(ConditionalPotential):
    """A HyCNN in ``x`` for every condition ``c`` (see :class:`ConditionalPotential`).

    Parameters
    ----------
    {conditional_size}
    hidden, tau
        Block widths and gate temperature of the HyCNN (see :class:`~hycnn_sc.models.HyCNN`).
    condition_hidden
        Widths of the condition MLP.
    **kwargs
        Passed to :class:`~hycnn_sc.models.HyCNN` (e.g. ``isotropic_quadratic``).

    Examples
    --------
    >>> f = ConditionalHyCNN(5, 3, hidden=(16, 16), tau=0.3)
    >>> f(torch.randn(7, 5), torch.zeros(3)).shape
    torch.Size([7])
    """

    def __init__(self, in_features: int, condition_features: int,
                 hidden: Sequence[int] = (48, 48, 48, 48), tau: float = 0.0,
                 condition_hidden: Sequence[int] = (64,), **kwargs) -> None:
        super().__init__(HyCNN(in_features, hidden, tau, **kwargs), condition_features,
                         condition_hidden)


@doc_params(conditional_size=CONDITIONAL_SIZE_DOC)
class ConditionalICNN(ConditionalPotential):
    """An ICNN in ``x`` for every condition ``c`` (the CondOT-style baseline).

    Parameters
    ----------
    {conditional_size}
    hidden
        Layer widths of the ICNN.
    condition_hidden
        Widths of the condition MLP.
    **kwargs
        Passed to :class:`~hycnn_sc.models.ICNN` (``activation``, ``quadratic``, ...).

    Examples
    --------
    >>> f = ConditionalICNN(5, 3, hidden=(16, 16), activation="softplus")
    >>> f(torch.randn(7, 5), torch.zeros(3)).shape
    torch.Size([7])
    """

    def __init__(self, in_features: int, condition_features: int,
                 hidden: Sequence[int] = (64, 64, 64, 64),
                 condition_hidden: Sequence[int] = (64,), **kwargs) -> None:
        super().__init__(ICNN(in_features, hidden, **kwargs), condition_features, condition_hidden)


class ConditionEncoder(nn.Module):
    """Condition vector of a (perturbation, context, dose) from learned embeddings and a summary.

    ``c = [Σ_{s ∈ singles} E[s],  E_1[v_1], …, E_J[v_J],  W · summary,  dose]``:

    * the perturbation is the sum of the embeddings of its singles (a combination ``A+B`` is
      ``E[A] + E[B]``, so an unseen combination of seen singles has an encoding);
    * each context covariate ``j`` has an embedding per value seen at fit time and row 0 for
      an unknown value;
    * ``summary`` is a fixed, permutation-invariant summary of the context's own control
      cells (their mean and log standard deviation per feature), mapped linearly: a new
      patient or cell line is encoded from its control cells;
    * ``dose`` (optional) enters as a number.

    Parameters
    ----------
    n_perturbations
        Number of single perturbations.
    context_sizes
        Number of seen values of each context covariate.
    summary_features
        Length of the control-cell summary (``0``: none).
    dose
        Whether a dose is part of the condition.
    embedding_dim
        Width of every embedding.

    Examples
    --------
    >>> encoder = ConditionEncoder(3, [2], summary_features=4, dose=False, embedding_dim=5)
    >>> singles = torch.tensor([[1.0, 1.0, 0.0]])      # the combination of singles 0 and 1
    >>> encoder(singles, torch.tensor([[2]]), torch.zeros(1, 4), None).shape
    torch.Size([1, 15])
    """

    def __init__(self, n_perturbations: int, context_sizes: Sequence[int], summary_features: int,
                 dose: bool, embedding_dim: int = 16) -> None:
        super().__init__()
        check_positive(n_perturbations, "n_perturbations", integer=True)
        check_positive(embedding_dim, "embedding_dim", integer=True)
        self.perturbation = nn.Parameter(torch.randn(n_perturbations, embedding_dim) * 0.1)
        self.contexts = nn.ModuleList(nn.Embedding(int(n) + 1, embedding_dim) for n in context_sizes)
        for table in self.contexts:
            nn.init.normal_(table.weight, std=0.1)
            with torch.no_grad():
                table.weight[0] = 0.0
        self.summary = nn.Linear(summary_features, embedding_dim) if summary_features else None
        self.dose = bool(dose)
        self.out_features = embedding_dim * (1 + len(self.contexts) + (summary_features > 0)) + self.dose

    def forward(self, singles: torch.Tensor, contexts: torch.Tensor, summary: torch.Tensor,
                dose: torch.Tensor | None) -> torch.Tensor:
        """Condition vectors ``[m, out_features]``.

        Parameters
        ----------
        singles
            ``[m, n_perturbations]`` membership (1 for every single of the perturbation).
        contexts
            ``[m, J]`` value index per covariate (0: unknown).
        summary
            ``[m, summary_features]`` control-cell summaries.
        dose
            ``[m]`` doses, or ``None`` without a dose.
        """
        parts = [singles @ self.perturbation]
        parts += [table(contexts[:, j]) for j, table in enumerate(self.contexts)]
        if self.summary is not None:
            parts.append(self.summary(summary))
        if self.dose:
            parts.append(dose.reshape(-1, 1))
        return torch.cat(parts, dim=-1)
