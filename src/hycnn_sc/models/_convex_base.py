"""Shared machinery of the input-convex potentials (HyCNN and ICNN).

Both families compute, for layers ``l = 0 .. L-1``,

    pre_l = V_l z_l + A_l x + b_l          (no ``V`` term for ``l = 0``)
    z_{l+1} = merge_l(pre_l)

and output ``f(x) = v_outᵀ z_L + a_outᵀ x + c``. The z-path weights ``V_l`` and ``v_out`` are
kept non-negative by a softplus reparameterisation; the input skips ``A_l``, the biases and the
output's linear term are free. ``merge_l`` is convex and non-decreasing in each argument (a gate
for HyCNN, an activation for ICNN), so every ``z`` is convex in ``x`` and so is ``f``.

Two implementation choices matter for speed:

* all input skips (``A_l`` of every layer and both branches, plus ``a_out``) are one stacked
  matrix, so the whole x-path of a forward pass is a single matrix product;
* every parameter carries a leading ``n_models`` axis, so ``K`` independent potentials are
  evaluated (and trained) as one batched computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._docs import doc_params
from .._validation import check_positive
from ._utils import check_hidden

#: Number of standard-normal probe points used by the moment-matching initialisation.
N_PROBES = 512


def softplus_inverse(value: torch.Tensor) -> torch.Tensor:
    """Inverse of softplus for positive ``value`` (numerically stable)."""
    return value + torch.log(-torch.expm1(-value))


#: The size parameters of every potential, for docstrings (placeholder ``{potential_size}``).
POTENTIAL_SIZE_DOC = """\
in_features
    Input dimension ``d``.
hidden
    Width of each hidden layer."""


@doc_params(potential_size=POTENTIAL_SIZE_DOC)
class ConvexPotential(nn.Module):
    """Base class of input-convex scalar potentials ``f: R^d -> R`` (see module docstring).

    Subclasses set :attr:`n_branches` and implement :meth:`merge`; implementing
    :meth:`merge_with_slope` (and :meth:`merge_backward` for more than one branch) as well
    gives the fast explicit gradient :meth:`value_and_gradient`.

    Parameters
    ----------
    {potential_size}
    n_models
        Number of independent potentials stored side by side (batched training of many maps).
    skip_variance
        Share of each pre-activation's initial variance that comes from the input skip
        (the rest from the positive z-path); see :meth:`reset_parameters`.
    zero_skip_init
        Start the input skips of layers ``l >= 1`` at zero (the z-path carries all variance).
    isotropic_quadratic
        Initial ``α`` of an added term ``½ α ‖x‖²`` with learnable ``α = softplus(raw) > 0``;
        ``0`` (default) adds no term. The network alone grows linearly, so its convex
        conjugate is infinite outside a bounded set and the minimax OT objective can diverge;
        the quadratic term makes the potential strongly convex (conjugate finite everywhere).
        Keep ``α`` small: ``∇f = αx + ∇net`` cannot contract any direction by more than ``α``
        until ``α`` is learned down. A scalar cannot represent an anisotropic map: the
        network still has to learn it.
    full_quadratic
        Use ``½ ‖L x‖²`` with a learnable ``d × d`` matrix ``L`` (started at ``√α · I``, ``α``
        from ``isotropic_quadratic``, or ``I`` when that is 0) instead of the scalar term. The
        potential then contains the whole family of Gaussian (affine) OT maps, and
        :meth:`set_quadratic_part` can start it exactly at one, the network learning only the
        non-Gaussian residual. Costs ``d²`` parameters and one ``d × d`` product per pass.
    """

    n_branches: int = 1

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        *,
        n_models: int = 1,
        skip_variance: float = 0.5,
        zero_skip_init: bool = False,
        isotropic_quadratic: float = 0.0,
        full_quadratic: bool = False,
    ) -> None:
        super().__init__()
        check_positive(in_features, "in_features", integer=True)
        check_positive(n_models, "n_models", integer=True)
        if not 0.0 <= skip_variance <= 1.0:
            raise ValueError(f"skip_variance must lie in [0, 1], got {skip_variance!r}.")
        self.in_features = int(in_features)
        self.hidden = check_hidden(hidden)
        self.n_models = int(n_models)
        self.skip_variance = float(skip_variance)
        self.zero_skip_init = bool(zero_skip_init)
        branch_widths = [self.n_branches * width for width in self.hidden]
        # Row blocks of the stacked input matrix: one per layer, then one row for a_outᵀ x + c.
        self._split_sizes = [*branch_widths, 1]
        rows = sum(self._split_sizes)
        self.input_weight = nn.Parameter(torch.empty(self.n_models, rows, self.in_features))
        self.input_bias = nn.Parameter(torch.empty(self.n_models, rows))
        self.hidden_weight_raw = nn.ParameterList(
            nn.Parameter(torch.empty(self.n_models, out_width, in_width))
            for out_width, in_width in zip(branch_widths[1:], self.hidden[:-1], strict=True)
        )
        self.output_weight_raw = nn.Parameter(torch.empty(self.n_models, self.hidden[-1]))
        check_positive(isotropic_quadratic, "isotropic_quadratic", allow_zero=True)
        self.isotropic_quadratic = float(isotropic_quadratic)
        self.full_quadratic = bool(full_quadratic)
        self.quadratic_weight_raw = (
            nn.Parameter(torch.empty(self.n_models))
            if self.isotropic_quadratic > 0 and not self.full_quadratic
            else None
        )
        self.quadratic_factor = (
            nn.Parameter(torch.empty(self.n_models, self.in_features, self.in_features))
            if self.full_quadratic
            else None
        )
        self.reset_parameters()

    # ------------------------------------------------------------------ structure
    def merge(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        """Map pre-activations ``[..., n_branches * width]`` of ``layer`` to ``z [..., width]``."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Number of trainable parameters of one potential (excluding the ``n_models`` copies)."""
        return sum(p.numel() for p in self.parameters()) // self.n_models

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, hidden={self.hidden}"
        if self.n_models != 1:
            text += f", n_models={self.n_models}"
        if self.isotropic_quadratic:
            text += f", isotropic_quadratic={self.isotropic_quadratic}"
        if self.full_quadratic:
            text += ", full_quadratic=True"
        return text

    # ------------------------------------------------------------------ forward
    def _input_path(self, x: torch.Tensor) -> list[torch.Tensor]:
        weight = self.input_weight.transpose(-1, -2)
        bias = self.input_bias.unsqueeze(-2)
        # the bias is added inside the matrix product where the shapes allow (one pass less)
        if x.dim() == 2 and self.n_models == 1:
            skips = torch.addmm(bias[0], x, weight[0]).unsqueeze(0)
        elif x.dim() == 3 and x.shape[0] == self.n_models:
            skips = torch.baddbmm(bias, x, weight)
        else:
            skips = torch.matmul(x, weight) + bias
        return list(skips.split(self._split_sizes, dim=-1))

    @property
    def modulation_sizes(self) -> list[int]:
        """Column blocks of a ``modulation`` (see :meth:`forward`), in order.

        A bias shift for every pre-activation row of every layer, a z-path scale for every
        row of layers ``1 .. L-1``, a scale of the output's z-term per last-layer unit, and
        the output's linear term (``d`` columns).
        """
        return [*self._split_sizes[:-1], *self._split_sizes[1:-1], self.hidden[-1],
                self.in_features]

    def merge_with_slope(self, pre: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``merge(pre)`` and the local derivative that :meth:`merge_backward` needs.

        Optional: a subclass without it is differentiated by autograd (see
        :attr:`explicit_gradient`).
        """
        raise NotImplementedError

    @property
    def smooth(self) -> bool:
        """Whether ``∇f`` is Lipschitz (every merge has a Lipschitz derivative). Only then
        does the excess of the semi-dual objective bound the error of the map ``∇f``, so only
        then do the cycles of ``n_iters="auto"`` judge it by the held-out semi-dual. The
        constant grows as the merges sharpen (a HyCNN's as ``1/τ``), so the bound weakens for
        a very small ``τ``."""
        return False

    @property
    def explicit_gradient(self) -> bool:
        """Whether :meth:`value_and_gradient` is available (the subclass implements
        :meth:`merge_with_slope`); :func:`potential_gradient` uses autograd otherwise."""
        return type(self).merge_with_slope is not ConvexPotential.merge_with_slope

    def merge_backward(self, slope: torch.Tensor, upstream: torch.Tensor, layer: int) -> torch.Tensor:
        """Chain rule through :meth:`merge`: ``∂out/∂pre`` from ``∂out/∂z`` (``upstream``)."""
        return upstream * slope

    def forward(self, x: torch.Tensor, modulation: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the potential.

        Parameters
        ----------
        x
            ``[n, d]`` points, or ``[n_models, n, d]`` with one batch per stacked model.
        modulation
            Optional ``[m, sum(modulation_sizes)]`` raw modulation of ``m`` conditions (used by
            :class:`~hycnn_sc.models.ConditionalPotential`), with ``x`` of shape ``[m, n, d]``:
            bias shifts (free), positive scales ``softplus(raw) / log 2`` (``1`` at ``raw = 0``)
            of the z-path and of the output's z-term, and a free linear term ``aᵀx``. Every
            modulated potential is convex in ``x``: scales stay positive and the rest is
            affine in ``x``.

        Returns
        -------
        ``[n]`` when ``n_models == 1`` and ``x`` is 2-D, else ``[n_models, n]`` (``[m, n]``
        with a modulation).
        """
        return self._evaluate(x, modulation, with_gradient=False)[0]

    def value_and_gradient(
        self, x: torch.Tensor, modulation: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` and ``∇f(x)`` in one pass, without a second autograd pass.

        The gradient is computed by an explicit backward recursion through the layers (the
        chain rule written as tensor operations), so it is differentiable with respect to
        the parameters with a *first-order* autograd pass: the minimax inner step no longer
        needs double backward, and under ``torch.no_grad()`` no graph is built at all.
        Agrees with ``torch.autograd.grad`` to float rounding.

        Parameters
        ----------
        x, modulation
            As in :meth:`forward`.

        Returns
        -------
        The values (shaped as :meth:`forward`'s) and the gradients (shaped as ``x``; a 2-D
        ``x`` shared by ``n_models`` stacked potentials gets the sum of their gradients, as
        ``torch.autograd.grad`` of the summed values would).

        Examples
        --------
        >>> from hycnn_sc.models import HyCNN
        >>> f = HyCNN(3, hidden=(8, 8), tau=0.5)
        >>> x = torch.randn(4, 3)
        >>> values, gradient = f.value_and_gradient(x)
        >>> torch.allclose(gradient, potential_gradient(f, x, autograd=True), atol=1e-6)
        True
        """
        return self._evaluate(x, modulation, with_gradient=True)

    def _modulation_blocks(self, modulation: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
        """Bias shifts, z-path scales, output scale and linear term of a raw modulation."""
        n_layers = len(self.hidden)
        blocks = modulation.split(self.modulation_sizes, dim=-1)
        shifts = [shift.unsqueeze(-2) for shift in blocks[:n_layers]]
        scales = [_positive(raw).unsqueeze(-2) for raw in blocks[n_layers : 2 * n_layers - 1]]
        return shifts, scales, _positive(blocks[-2]).unsqueeze(-2), blocks[-1].unsqueeze(-2)

    def _evaluate(
        self, x: torch.Tensor, modulation: torch.Tensor | None, *, with_gradient: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Expected inputs with {self.in_features} features, got shape {tuple(x.shape)}."
            )
        skips = self._input_path(x)
        scales: list[torch.Tensor | None] = [None] * len(self.hidden_weight_raw)
        weight = F.softplus(self.output_weight_raw).unsqueeze(-2)
        linear = None
        if modulation is not None:
            shifts, scales, output_scale, linear = self._modulation_blocks(modulation)
            skips = [skip + shift for skip, shift in zip(skips, shifts, strict=False)] + [
                skips[-1] + (x * linear).sum(-1, keepdim=True)]
            weight = weight * output_scale
        slopes, path_weights = [], []
        z, slope = self._merge(skips[0], 0, with_gradient)
        slopes.append(slope)
        for layer, (raw, scale) in enumerate(zip(self.hidden_weight_raw, scales, strict=True), 1):
            path_weight = F.softplus(raw)
            path = torch.matmul(z, path_weight.transpose(-1, -2))
            if scale is not None:
                path = path * scale
            z, slope = self._merge(skips[layer] + path, layer, with_gradient)
            slopes.append(slope)
            path_weights.append(path_weight)
        out = (z * weight).sum(-1) + skips[-1].squeeze(-1)
        quadratic = self._quadratic_value(x)
        if quadratic is not None:
            out = out + quadratic
        gradient = None
        if with_gradient:
            gradient = self._backward(x, slopes, path_weights, scales, weight.expand_as(z), linear)
        if gradient is not None and gradient.shape != x.shape:  # x broadcast over stacked models
            gradient = gradient.sum_to_size(x.shape)
        if x.dim() == 2 and self.n_models == 1:
            out = out.squeeze(0)
        return out, gradient

    def _merge(self, pre: torch.Tensor, layer: int,
               with_slope: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if with_slope:
            return self.merge_with_slope(pre, layer)
        return self.merge(pre, layer), None

    def _backward(self, x: torch.Tensor, slopes: list[torch.Tensor], path_weights: list[torch.Tensor],
                  scales: list[torch.Tensor | None], upstream: torch.Tensor,
                  linear: torch.Tensor | None) -> torch.Tensor:
        """``∇f(x)`` by the chain rule from the output back to the stacked input path."""
        pre_gradients: list[torch.Tensor] = [upstream] * len(slopes)  # filled from the top
        for layer in range(len(slopes) - 1, -1, -1):
            pre_gradient = self.merge_backward(slopes[layer], upstream, layer)
            pre_gradients[layer] = pre_gradient
            if layer > 0:
                scale = scales[layer - 1]
                if scale is not None:
                    pre_gradient = pre_gradient * scale
                upstream = torch.matmul(pre_gradient, path_weights[layer - 1])
        ones = torch.ones_like(pre_gradients[0][..., :1])
        gradient = torch.matmul(torch.cat([*pre_gradients, ones], -1), self.input_weight)
        if linear is not None:
            gradient = gradient + linear
        quadratic = self._quadratic_gradient(x)
        return gradient if quadratic is None else gradient + quadratic

    def _quadratic_value(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.quadratic_weight_raw is not None:
            alpha = F.softplus(self.quadratic_weight_raw).unsqueeze(-1)
            return 0.5 * alpha * x.square().sum(-1)
        if self.quadratic_factor is not None:
            return 0.5 * torch.matmul(x, self.quadratic_factor.transpose(-1, -2)).square().sum(-1)
        return None

    def _quadratic_gradient(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.quadratic_weight_raw is not None:
            alpha = F.softplus(self.quadratic_weight_raw).reshape(-1, 1, 1)
            return alpha * x
        if self.quadratic_factor is not None:
            factor = self.quadratic_factor
            return torch.matmul(torch.matmul(x, factor.transpose(-1, -2)), factor)
        return None

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Moment-matching initialisation for positive z-path weights.

        Positive weights make all units of a layer positively correlated, so the usual
        fan-in scaling lets activations drift in mean and explode or vanish in variance with
        depth (Hoedt & Klambauer, 2023, "Principled weight initialisation for input-convex
        neural networks"). Following their moment-matching principle, we draw positive
        z-path weights ``V ~ U(0.1, 1)`` (as softplus of a raw parameter) and Gaussian input
        skips ``A ~ N(0, 1/d)``, then propagate ``N_PROBES`` standard-normal probe inputs
        layer by layer and rescale every row so that, per unit and branch, the z-path
        contributes variance ``1 - skip_variance``, the input skip ``skip_variance`` and the
        bias cancels the mean: each pre-activation starts with mean 0 and variance 1 at
        every depth. The output's z-term is scaled to unit variance and centred; ``a_out``
        starts at zero. Inputs are expected to be roughly standardised (the estimators in
        this package standardise internally).
        """
        generator = generator if generator is not None else torch.default_generator
        device = self.input_weight.device
        n_models, d = self.n_models, self.in_features

        weight = torch.randn(self.input_weight.shape, generator=generator) / math.sqrt(d)
        bias = torch.zeros(self.input_bias.shape)
        probes = torch.randn(n_models, N_PROBES, d, generator=generator)
        starts = [0]
        for size in self._split_sizes:
            starts.append(starts[-1] + size)

        def normalise(values: torch.Tensor, target_var: float) -> tuple[torch.Tensor, torch.Tensor]:
            std = values.std(dim=1, keepdim=True).clamp_min(1e-8)
            scale = math.sqrt(target_var) / std  # [E, 1, units]
            return scale.squeeze(1), (values * scale).mean(dim=1)

        z = None
        for layer in range(len(self.hidden)):
            rows = slice(starts[layer], starts[layer + 1])
            skip = probes @ weight[:, rows].transpose(-1, -2)
            if layer == 0:
                scale, mean = normalise(skip, 1.0)
                weight[:, rows] *= scale.unsqueeze(-1)
                pre = skip * scale.unsqueeze(1)
                bias[:, rows] = -mean
            else:
                raw = self.hidden_weight_raw[layer - 1]
                positive = torch.empty(raw.shape).uniform_(0.1, 1.0, generator=generator)
                path = z @ positive.transpose(-1, -2)
                skip_share = 0.0 if self.zero_skip_init else self.skip_variance
                path_scale, path_mean = normalise(path, 1.0 - skip_share)
                positive *= path_scale.unsqueeze(-1)
                if skip_share == 0.0:
                    weight[:, rows] = 0.0
                    skip_scale, skip_mean = torch.zeros_like(path_scale), torch.zeros_like(path_mean)
                else:
                    skip_scale, skip_mean = normalise(skip, skip_share)
                    weight[:, rows] *= skip_scale.unsqueeze(-1)
                bias[:, rows] = -(path_mean + skip_mean)
                pre = path * path_scale.unsqueeze(1) + skip * skip_scale.unsqueeze(1)
                raw.copy_(softplus_inverse(positive.clamp_min(1e-6)).to(device))
            pre = pre + bias[:, rows].unsqueeze(1)
            z = self.merge(pre, layer)

        output = torch.full(self.output_weight_raw.shape, 1.0 / self.hidden[-1])
        path = (z * output.unsqueeze(1)).sum(-1)
        std = path.std(dim=1, keepdim=True).clamp_min(1e-8)
        output = output / std
        weight[:, -1] = 0.0
        bias[:, -1] = -(path / std).mean(dim=1)
        self.output_weight_raw.copy_(softplus_inverse(output).to(device))
        self.input_weight.copy_(weight.to(device))
        self.input_bias.copy_(bias.to(device))
        if self.quadratic_weight_raw is not None:
            alpha = torch.full((n_models,), self.isotropic_quadratic)
            self.quadratic_weight_raw.copy_(softplus_inverse(alpha).to(device))
        if self.quadratic_factor is not None:
            scale = math.sqrt(self.isotropic_quadratic) if self.isotropic_quadratic > 0 else 1.0
            eye = torch.eye(d).expand(n_models, d, d) * scale
            self.quadratic_factor.copy_(eye.to(device))

    @torch.no_grad()
    def set_quadratic_part(
        self, matrix: torch.Tensor, linear: torch.Tensor, residual_scale: float = 0.01
    ) -> None:
        """Start the potential at ``½ xᵀ M x + bᵀ x`` plus a damped network residual.

        Then ``∇f(x) ≈ M x + b``: with ``M``, ``b`` of a Gaussian OT map the fitted map starts
        as that map, and training can only move it where the data ask. Needs
        ``full_quadratic=True``.

        Parameters
        ----------
        matrix
            Symmetric positive semi-definite ``[n_models, d, d]`` (or ``[d, d]``); ``L`` is set
            to its symmetric square root.
        linear
            ``[n_models, d]`` (or ``[d]``): the affine part ``b`` (replaces ``a_out``).
        residual_scale
            Factor on the network's z-path output (its initial gradient is O(1) per unit
            input); small but non-zero keeps it trainable.
        """
        if self.quadratic_factor is None:
            raise ValueError("set_quadratic_part needs a potential built with full_quadratic=True.")
        d, n_models = self.in_features, self.n_models
        matrix = torch.as_tensor(matrix, dtype=torch.float64).reshape(-1, d, d).expand(n_models, d, d)
        linear = torch.as_tensor(linear, dtype=torch.float32).reshape(-1, d).expand(n_models, d)
        values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.transpose(-1, -2)))
        root = (vectors * values.clamp_min(0.0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)
        device = self.quadratic_factor.device
        self.quadratic_factor.copy_(root.to(device, torch.float32))
        self.input_weight[:, -1] = linear.to(device)
        damped = F.softplus(self.output_weight_raw) * residual_scale
        self.output_weight_raw.copy_(softplus_inverse(damped.clamp_min(1e-12)))
        self.input_bias[:, -1] *= residual_scale


def _positive(raw: torch.Tensor) -> torch.Tensor:
    """A positive scale that equals 1 at ``raw = 0`` (``softplus(raw) / log 2``)."""
    return F.softplus(raw) / math.log(2.0)


def potential_gradient(
    potential: nn.Module, x: torch.Tensor, *, create_graph: bool = False, autograd: bool = False
) -> torch.Tensor:
    """``∇f(x)`` of a scalar potential, row by row (works for stacked ``[n_models, n, d]`` inputs).

    With ``create_graph=True`` the result stays differentiable with respect to the potential's
    parameters (needed by the minimax objective and by gradient-matching warm starts).
    Potentials with a ``value_and_gradient`` method (every :class:`ConvexPotential`) use its
    explicit chain rule, which needs no double backward and, without ``create_graph``, no
    graph; others (or ``autograd=True``) go through ``torch.autograd.grad``.

    Examples
    --------
    >>> from hycnn_sc.models import HyCNN
    >>> f = HyCNN(3, hidden=(8, 8), tau=1.0)
    >>> potential_gradient(f, torch.zeros(5, 3)).shape
    torch.Size([5, 3])
    """
    return _value_and_gradient(potential, x, create_graph=create_graph, autograd=autograd)[1]


def potential_value_and_gradient(potential: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(x)`` and ``∇f(x)``, detached, in one pass where the potential has an explicit gradient.

    Examples
    --------
    >>> from hycnn_sc.models import HyCNN
    >>> f = HyCNN(3, hidden=(8, 8), tau=1.0)
    >>> values, gradients = potential_value_and_gradient(f, torch.zeros(5, 3))
    >>> values.shape, gradients.shape
    (torch.Size([5]), torch.Size([5, 3]))
    """
    values, gradient = _value_and_gradient(potential, x)
    return values.detach(), gradient


def _value_and_gradient(potential: nn.Module, x: torch.Tensor, *, create_graph: bool = False,
                        autograd: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    explicit = getattr(potential, "value_and_gradient", None)
    if explicit is not None and getattr(potential, "explicit_gradient", False) and not autograd:
        with torch.enable_grad() if create_graph else torch.no_grad():
            return explicit(x)
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        values = potential(x)
        (gradient,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph)
    return values, gradient
