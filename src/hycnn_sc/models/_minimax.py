"""The training loop of the minimax semi-dual, for one or many stacked transport maps.

Kept apart from the objective (:mod:`.objectives`) and from the user-facing estimator
(:mod:`.transport`): the loop only knows two stacked potentials, two samplers and a
validation set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..metrics import energy_distance
from ._convex_base import potential_gradient
from .objectives import inner_objective, outer_objective
from .schedules import cosine_factor, tau_at

#: A still-falling validation curve: the best value improved by more than this fraction during
#: the last quarter of training.
CONVERGENCE_TOLERANCE = 0.05
#: How often a non-finite loss may be recovered from before training stops.
MAX_NONFINITE_RECOVERIES = 3


class StackedSamples:
    """Several point clouds (one per stacked model) sampled as one ``[n_models, batch, d]`` tensor.

    Identical arrays (e.g. one control population shared by many perturbation maps) are stored
    once.
    """

    def __init__(self, arrays: Sequence[np.ndarray], device: torch.device) -> None:
        unique: dict[int, int] = {}
        blocks, offsets, sizes = [], [], []
        total = 0
        for array in arrays:
            key = id(array)
            if key not in unique:
                unique[key] = total
                blocks.append(torch.as_tensor(array, dtype=torch.float32))
                total += len(array)
            offsets.append(unique[key])
            sizes.append(len(array))
        self.values = torch.cat(blocks).to(device)
        self.offsets = torch.tensor(offsets, dtype=torch.long)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.arrays = list(arrays)
        #: Indices of the clouds :meth:`sample` draws from (None: all), set per training step
        #: when one step covers a subset of many conditions.
        self.active: torch.Tensor | None = None

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``batch_size`` points with replacement from each (active) cloud."""
        sizes, offsets = self.sizes, self.offsets
        if self.active is not None:
            sizes, offsets = sizes[self.active], offsets[self.active]
        uniform = torch.rand(len(sizes), batch_size, generator=generator)
        index = (uniform * sizes.unsqueeze(1)).long().clamp_max_(sizes.unsqueeze(1) - 1)
        return self.values[(index + offsets.unsqueeze(1)).to(self.values.device)]

    def padded(self) -> torch.Tensor:
        """All clouds as ``[n_models, max_size, d]``, shorter ones padded by repetition."""
        longest = int(self.sizes.max())
        rows = [
            torch.arange(longest) % size + offset
            for size, offset in zip(self.sizes.tolist(), self.offsets.tolist(), strict=True)
        ]
        return self.values[torch.stack(rows).to(self.values.device)]


@dataclass
class MinimaxSettings:
    """Optimisation settings of :func:`train_minimax` (validated by the estimator)."""

    n_iters: int
    inner_steps: int
    batch_size: int
    lr: float
    lr_final_fraction: float
    lr_warmup_fraction: float
    betas: tuple[float, float]
    validation_every: int
    tau: float | None
    tau_schedule: str | None
    tau_final: float
    tau_cycles: int
    progress: bool


@dataclass
class MinimaxResult:
    """What training produced beside the (best-iterate) weights, per stacked model."""

    history: dict[str, np.ndarray]
    best_iteration: np.ndarray
    best_validation: np.ndarray
    converged: np.ndarray
    interrupted: bool = False
    nonfinite_recoveries: int = 0
    stopped_early: bool = False
    messages: list[str] = field(default_factory=list)


def warm_start(
    potential: nn.Module,
    points: StackedSamples,
    target_map: Callable[[torch.Tensor], torch.Tensor],
    *,
    n_steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    before_step: Callable[[int | None], None] | None = None,
) -> None:
    """Fit ``∇potential ≈ target_map`` on ``points`` by gradient matching.

    A plain (stable) regression: Adam from ``lr`` with a cosine decay to 1 % over ``n_steps``.
    ``before_step(step)`` runs before every step (``before_step(None)`` at the end), e.g. to
    draw the conditions of a conditional potential.
    """
    optimizer = torch.optim.Adam(potential.parameters(), lr=lr)
    for step in range(n_steps):
        if before_step is not None:
            before_step(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine_factor(step, n_steps, 0.01)
        batch = points.sample(batch_size, generator)
        gradient = potential_gradient(potential, batch, create_graph=True)
        loss = (gradient - target_map(batch)).square().sum(-1).mean(-1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if before_step is not None:
        before_step(None)


def _validation_energy(
    f: nn.Module, padded_source: torch.Tensor, sizes: torch.Tensor, targets: Sequence[torch.Tensor]
) -> np.ndarray:
    mapped = potential_gradient(f, padded_source).detach()
    values = [
        float(energy_distance(mapped[k, :n], target))
        for k, (n, target) in enumerate(zip(sizes.tolist(), targets, strict=True))
    ]
    return np.asarray(values)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _keep_improved(best: dict[str, torch.Tensor], module: nn.Module, improved: torch.Tensor) -> None:
    # Every parameter carries the n_models axis first, so a mask over models selects copies.
    for name, value in module.state_dict().items():
        best[name][improved] = value.detach()[improved]


def train_minimax(
    f: nn.Module,
    g: nn.Module,
    source: StackedSamples,
    target: StackedSamples,
    settings: MinimaxSettings,
    generator: torch.Generator,
    validation: tuple[StackedSamples, Sequence[torch.Tensor]] | None = None,
    before_step: Callable[[int | None], None] | None = None,
) -> MinimaxResult:
    """Train stacked potentials ``f`` (source → target map ``∇f``) and ``g`` (its inverse).

    The loop alternates ``inner_steps`` Adam steps on ``g`` with one on ``f`` (betas, a linear
    learning-rate warm-up and a cosine decay from ``settings``). With a validation set, the energy distance
    between ``∇f(x_val)`` and ``y_val`` is measured every ``validation_every`` iterations and
    each stacked model keeps its best iterate. A non-finite loss restores the best iterate
    and halves the learning rate (at most ``MAX_NONFINITE_RECOVERIES`` times, then training
    stops); ``KeyboardInterrupt`` stops training and keeps the best iterate. Both are reported
    as warnings and in the result.

    Conditional potentials (``f.shares_parameters``: one network for all ``n_models``
    conditions) keep the iterate with the best mean validation energy over conditions, and
    ``before_step(iteration)`` runs before every iteration (``before_step(None)`` before each
    validation and at the end) to choose the conditions a step covers.
    """
    n_models = len(source.sizes)
    s = settings
    optimizer_f = torch.optim.Adam(f.parameters(), lr=s.lr, betas=s.betas)
    optimizer_g = torch.optim.Adam(g.parameters(), lr=s.lr, betas=s.betas)
    g_params = list(g.parameters())
    lr_scale = 1.0
    losses_f = np.full((s.n_iters, n_models), np.nan)
    losses_g = np.full((s.n_iters, n_models), np.nan)
    taus = np.full(s.n_iters, np.nan)
    checks: list[int] = []
    check_values: list[np.ndarray] = []
    best_f, best_g = _snapshot(f), _snapshot(g)
    best_value = np.full(n_models, np.inf)
    best_iteration = np.zeros(n_models, dtype=int)
    result = MinimaxResult(history={}, best_iteration=best_iteration, best_validation=best_value,
                           converged=np.ones(n_models, dtype=bool))

    shared = bool(getattr(f, "shares_parameters", False))

    def validate(iteration: int) -> None:
        if before_step is not None:
            before_step(None)
        if validation is None:  # no held-out data: remember the last finite iterate instead
            best_f.update(_snapshot(f))
            best_g.update(_snapshot(g))
            best_iteration[:] = iteration
            return
        values = _validation_energy(f, validation[0].padded(), validation[0].sizes, validation[1])
        checks.append(iteration)
        check_values.append(values)
        improved = values < best_value
        if shared:  # one set of weights: keep it when the mean over conditions improved
            improved[:] = values.mean() < best_value.mean()
        if improved.any() and shared:
            best_f.update(_snapshot(f))
            best_g.update(_snapshot(g))
        elif improved.any():
            mask = torch.as_tensor(improved)
            _keep_improved(best_f, f, mask)
            _keep_improved(best_g, g, mask)
        best_value[improved] = values[improved]
        best_iteration[improved] = iteration

    def set_learning_rate(iteration: int) -> None:
        warmup = max(int(s.lr_warmup_fraction * s.n_iters), 1)
        rate = s.lr * lr_scale * min(1.0, (iteration + 1) / warmup) * cosine_factor(
            iteration, s.n_iters, s.lr_final_fraction
        )
        for optimizer in (optimizer_f, optimizer_g):
            for group in optimizer.param_groups:
                group["lr"] = rate

    def set_tau(iteration: int) -> float:
        if s.tau is None:
            return math.nan
        tau = tau_at(iteration, s.n_iters, tau=s.tau, schedule=s.tau_schedule,
                     tau_final=s.tau_final, cycles=s.tau_cycles)
        f.tau = g.tau = tau
        return tau

    set_tau(0)
    validate(0)
    bar = tqdm(range(s.n_iters), disable=not s.progress, desc="training transport map", leave=False)
    iteration = 0
    try:
        for iteration in bar:
            if before_step is not None:
                before_step(iteration)
            set_learning_rate(iteration)
            taus[iteration] = set_tau(iteration)
            for _ in range(s.inner_steps):
                loss_g, _ = inner_objective(f, g, target.sample(s.batch_size, generator))
                gradients = torch.autograd.grad(loss_g.sum(), g_params)
                for param, gradient in zip(g_params, gradients, strict=True):
                    param.grad = gradient
                optimizer_g.step()
            mapped = potential_gradient(g, target.sample(s.batch_size, generator)).detach()
            loss_f = outer_objective(f, source.sample(s.batch_size, generator), mapped)
            optimizer_f.zero_grad(set_to_none=True)
            loss_f.sum().backward()
            optimizer_f.step()

            values_f, values_g = loss_f.detach().cpu().numpy(), loss_g.detach().cpu().numpy()
            if values_f.shape != (n_models,):  # a step over a subset of shared conditions
                values_f, values_g = np.full(n_models, values_f.mean()), np.full(n_models, values_g.mean())
            losses_f[iteration], losses_g[iteration] = values_f, values_g
            if not (np.isfinite(values_f).all() and np.isfinite(values_g).all()):
                result.nonfinite_recoveries += 1
                f.load_state_dict(best_f)
                g.load_state_dict(best_g)
                if result.nonfinite_recoveries > MAX_NONFINITE_RECOVERIES:
                    result.stopped_early = True
                    result.messages.append(
                        f"Non-finite loss at iteration {iteration} after "
                        f"{MAX_NONFINITE_RECOVERIES} recoveries: training stopped and the best "
                        "iterate so far was kept. Lower lr or standardise the data."
                    )
                    break
                lr_scale *= 0.5
                optimizer_f.state.clear()
                optimizer_g.state.clear()
                result.messages.append(
                    f"Non-finite loss at iteration {iteration}: restored the best iterate and "
                    f"halved the learning rate (now {s.lr * lr_scale:.3g} at its peak)."
                )
                continue
            if (iteration + 1) % s.validation_every == 0 or iteration + 1 == s.n_iters:
                validate(iteration + 1)
                if s.progress and check_values:
                    bar.set_postfix(val_energy=f"{float(np.mean(check_values[-1])):.4g}")
    except KeyboardInterrupt:
        result.interrupted = True
        result.messages.append(
            f"Training interrupted at iteration {iteration}: kept the best iterate so far "
            "(the map is usable but may be under-trained)."
        )
    finally:
        bar.close()

    if validation is not None:
        f.load_state_dict(best_f)
        g.load_state_dict(best_g)
        values = np.asarray(check_values)
        if shared:
            values = np.repeat(values.mean(axis=1, keepdims=True), n_models, axis=1)
        quarter = [i for i, it in enumerate(checks) if it <= 0.75 * max(checks[-1], 1)]
        if quarter and len(quarter) < len(checks):
            before = values[quarter].min(axis=0)
            gain = (before - values.min(axis=0)) / np.maximum(np.abs(before), 1e-12)
            result.converged = gain <= CONVERGENCE_TOLERANCE
    if before_step is not None:
        before_step(None)
    result.history = {
        "loss_f": losses_f,
        "loss_g": losses_g,
        "tau": taus,
        "validation_iteration": np.asarray(checks, dtype=int),
        "validation_energy": np.asarray(check_values).reshape(len(checks), n_models),
    }
    for message in result.messages:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return result
