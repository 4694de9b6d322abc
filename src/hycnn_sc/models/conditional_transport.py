"""``ConditionalTransportMap``: one convex network for the OT maps of many conditions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from .._validation import as_float_array, make_generator
from ._convex_base import potential_gradient
from ._estimator import DEPRECATED, MinimaxEstimator
from ._minimax import StackedSamples, warm_start
from ._options import Auto, Potential, TauSchedule
from ._selection import (
    MAX_SCORED_CELLS,
    SHRINKAGE_GRID,
    choose_linear,
    choose_residual,
    fit_linear,
    fit_linear_in_frame,
)
from ._utils import check_hidden, resolve_device
from .conditional import ConditionalHyCNN, ConditionalICNN, ConditionalPotential, ConditionEncoder
from .gaussian import GaussianTransportMap
from .transport import (
    DEFAULT_QUADRATIC,
    MIN_GROUP_POINTS,
    MIN_RESIDUAL_CELLS,
    MIN_VALIDATION_POINTS,
    WARM_START_LR,
)

FORMAT = "hycnn_sc.ConditionalTransportMap"
FORMAT_VERSION = 1
#: Most held-out points per condition and side in the validation energy distance.
MAX_VALIDATION_POINTS = 500
#: Floor of a standard deviation in the control-cell summary (standardised units).
SUMMARY_FLOOR = 1e-3
#: Share of the transferable conditions (perturbation measured in another context, context
#: with other conditions) withheld from network training to choose ``λ`` for transfers.
TRANSFER_HOLDOUT_FRACTION = 0.1
#: Fewest conditions needed before any is withheld for that choice.
MIN_CONDITIONS_FOR_TRANSFER_HOLDOUT = 8


class Condition(NamedTuple):
    """One condition: a perturbation label (``"A+B"`` for a combination), a context, a dose."""

    perturbation: str
    context: tuple[str, ...] = ()
    dose: float | None = None


class _Bound(nn.Module):
    """A conditional potential bound to the table of training conditions (the loop's view).

    ``forward(x)`` takes ``[m, n, d]`` points of the ``m`` active conditions (all when
    ``active`` is None) and returns ``[m, n]``; contexts flagged in ``unknown`` are encoded
    as unseen (context dropout), so the network learns to rely on the control-cell summary.
    """

    shares_parameters = True

    def __init__(self, potential: ConditionalPotential, encoder: ConditionEncoder,
                 table: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.potential = potential
        self.encoder = encoder
        for name, value in table.items():
            self.register_buffer(name, value, persistent=False)
        self.active: torch.Tensor | None = None
        self.unknown: torch.Tensor | None = None

    @property
    def tau(self) -> float | None:
        return self.potential.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.potential.tau = value

    full_quadratic = False

    def conditions(self, rows: torch.Tensor | None = None,
                   unknown: torch.Tensor | None = None) -> torch.Tensor:
        """Condition vectors of the table's ``rows`` (all rows when None)."""
        pick = (lambda t: t) if rows is None else (lambda t: t[rows])
        contexts = pick(self.contexts)
        if unknown is not None:
            contexts = contexts.masked_fill(unknown.unsqueeze(-1), 0)
        return self.encoder(pick(self.singles), contexts, pick(self.summaries), pick(self.doses))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.potential(x, self.conditions(self.active, self.unknown))

    def value_and_gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.potential.value_and_gradient(x, self.conditions(self.active, self.unknown))

    @property
    def explicit_gradient(self) -> bool:
        return self.potential.body.explicit_gradient


class ConditionalTransportMap(MinimaxEstimator):
    """Squared-distance OT maps of many conditions from one partially input-convex network.

    One potential ``f(x, c)``, convex in the cell state ``x`` for every condition vector ``c``
    (:class:`~hycnn_sc.models.ConditionalHyCNN`), is trained with the minimax semi-dual on all
    (source, target, condition) triples together; ``∇ₓf(·, c)`` maps a condition's source
    (control) cells to its target cells. The condition vector is built by
    :class:`~hycnn_sc.models.conditional.ConditionEncoder` from a learned embedding of every
    single perturbation (a combination ``"A+B"`` is the sum of its singles'), a learned
    embedding of every context covariate value (cell type, cell line, patient), a summary of the
    context's own control cells, and an optional dose. It can therefore predict a combination
    of seen singles, a perturbation in a context where it was not measured, and a new context
    from its control cells alone.

    Every condition is modelled relative to its context's control mean, in units of one common
    scale. As in :class:`~hycnn_sc.models.TransportMap`, the map is a blend
    ``(1 − λ) T_lin(c) + λ ∇f(·, c)`` with a linear part ``T_lin``: for a condition seen at fit
    time its own (shrunk) Gaussian OT map; for an unseen one the average of the same
    perturbation's linear maps in the other contexts (or doses) where it was measured, or else
    the sum of its singles' mean shifts (the additive baseline; each shift shrunk towards zero
    by its sampling noise, so a single with no measurable effect adds nothing). ``λ``
    (``residual="auto"``) is kept above 0 only when the network beats the linear parts on
    held-out cells of the training conditions by more than 1.645 bootstrap standard errors.

    Parameters
    ----------
    model
        ``"hycnn"`` or ``"icnn"`` (the CondOT-style baseline).
    hidden, tau
        Widths and gate temperature of the convex network (as in ``TransportMap``).
    condition_hidden
        Widths of the condition MLP.
    embedding_dim
        Width of every learned embedding.
    n_iters, inner_steps, lr, lr_final_fraction, lr_warmup_fraction, betas, tau_schedule, tau_final, tau_cycles
        Optimisation, as in :class:`~hycnn_sc.models.TransportMap` (but ``lr`` 1e-3: the
        condition network over-fits small conditions faster at 3e-3, and on a nonlinear truth
        1e-3 kept a trained network on both seeds measured, 3e-3 on one). ``n_iters="auto"``
        trains in cosine cycles of doubling length (500, 1,000, ...) while they lower the
        mean held-out energy distance over conditions beyond its noise (a cycle that does
        not is undone), up to 1,200 epochs, one epoch being every condition's larger side
        drawn once (``conditions_per_step`` conditions per step); on small conditions it
        typically keeps the warm start after 1,500 iterations. (Unlike ``TransportMap``,
        which judges a smooth potential's cycles by the held-out semi-dual: for the shared
        network that cost the transfer to unseen condition pairs, see
        ``benchmarks/results_conditional.txt``.)
    batch_size
        Points per condition and side in one step.
    conditions_per_step
        Conditions one step covers (drawn at random; all when there are fewer). One step
        costs about ``conditions_per_step * batch_size`` points, whatever the number of
        conditions.
    warm_start, warm_start_iters
        ``"gaussian"``: before the minimax, match ``∇f(·, c)`` to every seen condition's linear
        part by gradient matching (``None``: no warm start).
    shrinkage
        ``γ`` of each condition's linear part (``"auto"``: chosen per condition on held-out
        cells, as in ``TransportMap``).
    residual
        ``λ`` of the network, or ``"auto"``.
    context_dropout
        Probability that a step encodes a condition's context as unseen, so that the network
        learns to predict a new context from its control-cell summary.
    combination_sep
        Separator of singles in a combination label.
    selection_fraction
        Share of every condition's cells held out to judge the cycles of ``n_iters="auto"``
        and pick the best iterate of a fixed budget (mean held-out energy distance), and ``λ``.
    selection_every
        Iterations between held-out checks (``None``: 20 per schedule; with
        ``n_iters="auto"``, 20 per cycle).
    network_kwargs
        Extra arguments of the convex network (``isotropic_quadratic`` defaults to 0.1).
    device, seed, progress
        As in ``TransportMap``.
    validation_fraction, validation_every
        Deprecated names of ``selection_fraction`` and ``selection_every``.

    Attributes
    ----------
    f_, g_ : ConditionalPotential
        The trained potentials (``g_``: target → source).
    encoder_f_, encoder_g_ : ConditionEncoder
        Their condition encoders.
    conditions_ : list of Condition
        The training conditions, in order.
    singles_ : list of str
        Single perturbations seen (embedding vocabulary).
    context_values_ : list of list of str
        Seen values of each context covariate (vocabularies).
    scale_ : float
        Common scale of the standardised units.
    residual_weight_ : float
        The chosen ``λ`` (seen conditions, unseen combinations, new contexts).
    residual_transfer_ : float
        ``λ`` for a perturbation asked for in a seen context where it was not measured,
        chosen on conditions withheld from network training and from its held-out checks
        (about 10 % of those whose perturbation and context both occur elsewhere, with at
        least 8 conditions).
    shrinkage_ : ndarray
        ``γ`` of every training condition's linear part.
    shift_ : ndarray
        Every training condition's mean shift (standardised units), shrunk towards zero by
        its sampling noise (``shrunk_mean_shift``); an unseen combination adds its
        singles' shifts.
    history_, best_iteration_, converged_, n_params_, seed_, selection_
        As in ``TransportMap`` (one history for the shared network, mean over conditions;
        ``cycle_criterion`` holds the mean held-out energy distance that judged the cycles).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> control = rng.normal(size=(300, 2))
    >>> cmap = ConditionalTransportMap(n_iters=30, hidden=(8,), warm_start_iters=10, seed=0)
    >>> cmap = cmap.fit([control] * 3, [control + [1, 0], control + [0, 1], control + [1, 1]],
    ...                 ["A", "B", "A+B"])
    >>> cmap.transport(control[:4], "A+B").shape
    (4, 2)
    """

    def __init__(
        self,
        model: Potential = "hycnn",
        hidden: Sequence[int] | None = None,
        tau: float | None = None,
        condition_hidden: Sequence[int] = (64,),
        embedding_dim: int = 16,
        n_iters: int | Literal["auto"] = "auto",
        inner_steps: int = 2,
        batch_size: int = 128,
        conditions_per_step: int = 4,
        lr: float = 1e-3,
        lr_final_fraction: float = 0.01,
        lr_warmup_fraction: float = 0.1,
        betas: tuple[float, float] = (0.5, 0.9),
        tau_schedule: TauSchedule | None = None,
        tau_final: float = 0.0,
        tau_cycles: int = 1,
        warm_start: Literal["gaussian"] | None = "gaussian",
        warm_start_iters: int = 200,
        shrinkage: float | Auto = "auto",
        residual: float | Auto = "auto",
        context_dropout: float = 0.2,
        combination_sep: str = "+",
        selection_fraction: float = 0.1,
        selection_every: int | None = None,
        network_kwargs: dict[str, Any] | None = None,
        device: str = "auto",
        seed: int | None = None,
        progress: bool = False,
        validation_fraction: float | str = DEPRECATED,
        validation_every: int | str | None = DEPRECATED,
    ) -> None:
        for name, value in locals().items():
            if name != "self":
                setattr(self, name, value)

    _positive_ints = ("n_iters", "inner_steps", "batch_size", "conditions_per_step", "embedding_dim")
    _auto_budget = True
    _tuple_params: ClassVar[dict[str, type]] = {"hidden": int, "condition_hidden": int,
                                                "betas": float}
    _format = FORMAT
    _format_version = FORMAT_VERSION
    _fitted_scalars: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "in_features_": int, "scale_": float, "seed_": int, "n_params_": int,
        "best_iteration_": int, "converged_": bool, "interrupted_": bool,
        "residual_weight_": float, "residual_transfer_": float, "selection_": dict,
    }
    _fitted_attributes = (*_fitted_scalars, "conditions_", "singles_", "context_values_",
                          "context_means_", "context_summaries_", "linear_", "shift_",
                          "transfer_", "shrinkage_", "history_", "f_", "g_", "encoder_f_",
                          "encoder_g_", "device_")

    def _validate_own(self) -> None:
        if len(self.condition_hidden):
            check_hidden(self.condition_hidden)
        if self.warm_start not in ("gaussian", None):
            raise ValueError(f"warm_start must be 'gaussian' or None, got {self.warm_start!r}.")
        if isinstance(self.context_dropout, bool) or not (
                isinstance(self.context_dropout, (int, float)) and 0 <= self.context_dropout < 1):
            raise ValueError(f"context_dropout must lie in [0, 1), got {self.context_dropout!r}.")
        if not isinstance(self.combination_sep, str) or not self.combination_sep:
            raise ValueError(f"combination_sep must be a non-empty string, got {self.combination_sep!r}.")

    # ------------------------------------------------------------------ conditions
    def split_singles(self, perturbation: str) -> list[str]:
        """The singles of a perturbation label (``"A+B"`` → ``["A", "B"]``), sorted, unique."""
        parts = [p.strip() for p in str(perturbation).split(self.combination_sep)]
        if any(not p for p in parts):
            raise ValueError(
                f"Perturbation {perturbation!r} has an empty single between separators "
                f"{self.combination_sep!r}."
            )
        return sorted(set(parts))

    def canonical(self, perturbation: str) -> str:
        """The label with its singles sorted (``"B+A"`` and ``"A+B"`` are one combination)."""
        return self.combination_sep.join(self.split_singles(perturbation))

    def _check_conditions(self, n: int, perturbations, contexts, doses) -> list[Condition]:
        if len(perturbations) != n:
            raise ValueError(f"perturbations needs one label per pair ({n}), got {len(perturbations)}.")
        contexts = [()] * n if contexts is None else [tuple(str(v) for v in c) for c in contexts]
        if len(contexts) != n or len({len(c) for c in contexts}) > 1:
            raise ValueError(
                f"contexts needs one tuple of covariate values per pair ({n}), all of the same "
                "length."
            )
        if doses is not None:
            if len(doses) != n:
                raise ValueError(f"doses needs one number per pair ({n}), got {len(doses)}.")
            try:
                doses = [float(d) for d in doses]
            except (TypeError, ValueError):
                raise TypeError(f"doses must be numbers, got {list(doses)[:5]}.") from None
            if not all(math.isfinite(d) for d in doses):
                raise ValueError("doses must be finite numbers (no NaN or inf).")
        conditions = [Condition(self.canonical(p), c, None if doses is None else doses[k])
                      for k, (p, c) in enumerate(zip(perturbations, contexts, strict=True))]
        if len(set(conditions)) < n:
            raise ValueError("Two pairs have the same perturbation, context and dose; merge them.")
        return conditions

    # ------------------------------------------------------------------ fitting
    def fit(self, sources: Sequence[Any], targets: Sequence[Any], perturbations: Sequence[str],
            *, contexts: Sequence[Sequence[str]] | None = None,
            doses: Sequence[float] | None = None) -> ConditionalTransportMap:
        """Learn the maps of all conditions with one network.

        Parameters
        ----------
        sources, targets
            One (source, target) pair of ``[n, d]`` arrays per condition. ``sources[k]`` are
            the control cells of condition ``k``'s context (pass the same array object for
            conditions sharing a context: it is held out and summarised once).
        perturbations
            Label of every condition; combinations join singles with ``combination_sep``.
        contexts
            Optional tuple of context covariate values per condition (e.g. ``("K562",)``).
        doses
            Optional dose (e.g. log-dose) per condition.

        Returns
        -------
        self
        """
        self._validate_params()
        n = len(sources)
        if n == 0 or len(targets) != n:
            raise ValueError(f"sources and targets must be equally long, non-empty lists; got {n} and {len(targets)}.")
        conditions = self._check_conditions(n, perturbations, contexts, doses)
        device = resolve_device(self.device)
        generator, seed = make_generator(self.seed)
        rng = np.random.default_rng(seed)
        context_keys = [c.context for c in conditions]
        data = _standardise(_convert_pairs(sources, targets), context_keys,
                            self._selection_fraction, rng)
        shrinkages = SHRINKAGE_GRID if self.shrinkage == "auto" else (float(self.shrinkage),)
        linear_train = self._fit_linear_parts(data, shrinkages, rng)
        self.singles_ = sorted({s for c in conditions for s in self.split_singles(c.perturbation)})
        n_covariates = len(context_keys[0])
        self.context_values_ = [sorted({key[j] for key in context_keys}) for j in range(n_covariates)]
        self.conditions_ = conditions
        self.scale_ = data.scale
        self.context_means_ = data.means
        self.context_summaries_ = data.summaries
        self.in_features_ = data.standard[0][0].shape[1]
        self.shift_ = np.stack([
            shrunk_mean_shift(*data.shared.once(k, "moments", lambda s=s: _moments(s)), *_moments(t))
            for k, (s, t) in enumerate(data.standard)])
        self.transfer_ = self._transfer_parts(data.standard, shrinkages, rng)
        self.seed_ = seed
        self.device_ = str(device)
        self._build(device, generator)
        self._train_network(data, linear_train, device, generator, rng)
        return self

    def _fit_linear_parts(self, data: _Standardised, shrinkages: Sequence[float],
                          rng: np.random.Generator) -> list[GaussianTransportMap]:
        """Every condition's linear part, its shrinkage chosen on its held-out cells.

        Sets ``linear_`` and ``shrinkage_`` (fitted on all cells); returns the linear parts
        fitted on the training cells only (the warm start and the residual test use them).
        """
        linear_train, linear_all, chosen = [], [], []
        for (s, t), (held_s, held_t) in zip(data.standard, data.masks, strict=True):
            _, gamma, _ = choose_linear(s, t, frames=("global",), shrinkages=shrinkages,
                                        source_labels=None, target_labels=None,
                                        held_source=held_s, held_target=held_t, rng=rng)
            chosen.append(gamma)
            linear_all.append(fit_linear(s, t, gamma))
            train = (s[~held_s], t[~held_t])
            linear_train.append(fit_linear(*train, gamma) if min(map(len, train)) >= 2 else linear_all[-1])
        self.linear_ = [_affine(lin) for lin in linear_all]
        self.shrinkage_ = np.asarray(chosen, dtype=float)
        return linear_train

    def _train_network(self, data: _Standardised, linear_train: list[GaussianTransportMap],
                       device: torch.device, generator: torch.Generator,
                       rng: np.random.Generator) -> None:
        """Warm start and minimax of the shared network; then ``λ`` for seen conditions and
        for transfers (sets ``history_``, ``best_iteration_``, ``converged_``, ...)."""
        train_network = self.residual != 0
        withheld = self._withheld_conditions(rng) if train_network else []
        f, g = self._bound("f"), self._bound("g")
        source, target, held, validation = data.training_samples(
            device, self._selection_fraction > 0, withheld)
        draw = self._condition_sampler(f, g, source, target, generator, withheld)
        if train_network and self.warm_start == "gaussian" and self.warm_start_iters > 0:
            self._warm_start(f, g, source, target, draw, generator, linear_train)
        # an epoch: every allowed condition's larger training side drawn once, per_step at a time
        largest = int(torch.maximum(source.sizes, target.sizes).max())
        n_allowed = len(self.conditions_) - len(withheld)
        result = self._run_minimax(
            f, g, source, target, generator, validation,
            points_per_epoch=largest * n_allowed,
            points_per_iteration=self.batch_size * draw.per_step,
            train_network=train_network, before_step=draw,
            subject=lambda _: "The conditional network (mean over conditions)")
        self.history_ = {name: values.mean(axis=1) if values.ndim == 2 else values
                         for name, values in result.history.items()}
        self.best_iteration_ = int(result.best_iteration[0])
        self.converged_ = bool(result.converged.all())
        self.interrupted_ = bool(result.interrupted)
        self.n_params_ = int(sum(p.numel() for p in f.parameters()))
        self.selection_ = {"shrinkage_per_condition": [float(v) for v in self.shrinkage_]}
        trained = [k for k in range(len(self.conditions_)) if k not in withheld]
        self.residual_weight_ = self._choose_residual(
            [held[k] for k in trained], [linear_train[k] for k in trained], trained,
            train_network, rng)
        self.residual_transfer_ = self._choose_transfer_residual(data.standard, withheld, rng)

    def _withheld_conditions(self, rng: np.random.Generator) -> list[int]:
        """Conditions kept out of network training to choose ``λ`` for transfers.

        Only with ``residual="auto"``, validation, and at least
        ``MIN_CONDITIONS_FOR_TRANSFER_HOLDOUT`` conditions: ``TRANSFER_HOLDOUT_FRACTION`` of
        those whose perturbation was measured in another context and whose context has other
        conditions (at least one). Their linear parts are still fitted.
        """
        conditions = self.conditions_
        if (self.residual != "auto" or self._selection_fraction == 0
                or len(conditions) < MIN_CONDITIONS_FOR_TRANSFER_HOLDOUT):
            return []
        transferable = [
            k for k, c in enumerate(conditions)
            if any(o.perturbation == c.perturbation and o.context != c.context for o in conditions)
            and sum(o.context == c.context for o in conditions) > 1
        ]
        if not transferable:
            return []
        n_withheld = max(1, round(TRANSFER_HOLDOUT_FRACTION * len(transferable)))
        return sorted(rng.choice(transferable, n_withheld, replace=False).tolist())

    def _choose_transfer_residual(self, standard, withheld: list[int],
                                  rng: np.random.Generator) -> float:
        """``λ`` for a perturbation in a seen context where it was not measured.

        Chosen on the withheld conditions, which the network never saw: their cells predicted
        by the network against the average of the same perturbation's linear parts in the
        other contexts, with the rule of ``residual="auto"`` (pooled cells). Without withheld
        conditions, the ``λ`` of seen conditions.
        """
        if not withheld:
            return float(self.residual_weight_)
        per_condition = max(MAX_SCORED_CELLS // len(withheld), 2)
        f = self._bound("f")
        linear, network, observed = [], [], []
        for k in withheld:
            condition = self.conditions_[k]
            others = [j for j, c in enumerate(self.conditions_)
                      if c.perturbation == condition.perturbation and c.dose == condition.dose
                      and c.context != condition.context and j not in withheld]
            source, target = standard[k]
            if not others:
                continue
            rows_s = rng.permutation(len(source))[:per_condition]
            rows_t = rng.permutation(len(target))[:per_condition]
            points = source[rows_s].astype(np.float64)
            matrix = np.mean([self.linear_[j][0] for j in others], axis=0)
            offset = np.mean([self.linear_[j][1] for j in others], axis=0)
            linear.append(points @ matrix + offset)
            f.active = torch.tensor([k], device=f.singles.device)
            tensor = torch.as_tensor(source[rows_s], device=f.singles.device).unsqueeze(0)
            network.append(potential_gradient(f, tensor)[0].detach().cpu().numpy().astype(np.float64))
            observed.append(target[rows_t].astype(np.float64))
        if not linear:
            return float(self.residual_weight_)
        weight, record = choose_residual(np.concatenate(linear), np.concatenate(network),
                                         np.concatenate(observed), rng)
        self.selection_.update({f"transfer_{name}": value for name, value in record.items()})
        self.selection_["transfer_withheld"] = [
            [self.conditions_[k].perturbation, list(self.conditions_[k].context)] for k in withheld]
        return weight

    def _transfer_parts(self, standard, shrinkages, rng) -> dict[tuple[str, float | None], tuple]:
        """Linear parts for a perturbation in a context where it was not measured.

        For every (perturbation, dose) measured in two or more contexts: the frame
        (``"global"`` over the context-centred cells, or ``"within"``: the average of the
        per-context maps) and shrinkage chosen by leave-one-context-out, as
        :class:`TransportMap` chooses them with groups, fitted on all its contexts.
        """
        parts = {}
        keys = {(c.perturbation, c.dose) for c in self.conditions_}
        for key in sorted(keys, key=str):
            rows = [k for k, c in enumerate(self.conditions_) if (c.perturbation, c.dose) == key]
            if len({self.conditions_[k].context for k in rows}) < 2:
                continue
            source = np.concatenate([standard[k][0] for k in rows])
            target = np.concatenate([standard[k][1] for k in rows])
            labels = [np.concatenate([np.full(len(standard[k][side]), str(k)) for k in rows])
                      for side in (0, 1)]
            frame, gamma, _ = choose_linear(
                source, target, frames=("global", "within"), shrinkages=shrinkages,
                source_labels=labels[0], target_labels=labels[1],
                held_source=np.zeros(len(source), bool), held_target=np.zeros(len(target), bool),
                rng=rng)
            parts[key] = _affine(fit_linear_in_frame(source, target, frame, gamma, *labels))
        return parts

    def _build(self, device: torch.device, generator: torch.Generator) -> None:
        """Create encoders and potentials (seeded) for the fitted vocabularies."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # seeded layers, the caller's RNG untouched
            torch.manual_seed(seed)
            self._build_seeded(device, generator)

    def _build_seeded(self, device: torch.device, generator: torch.Generator) -> None:
        kwargs = {"isotropic_quadratic": DEFAULT_QUADRATIC, **(self.network_kwargs or {})}
        for prefix in ("f", "g"):
            encoder = ConditionEncoder(
                len(self.singles_), [len(v) for v in self.context_values_],
                summary_features=2 * self.in_features_ if self.context_values_ else 0,
                dose=self.conditions_[0].dose is not None, embedding_dim=self.embedding_dim,
            )
            if self.model == "hycnn":
                potential = ConditionalHyCNN(self.in_features_, encoder.out_features, self._resolved_hidden(),
                                             self._resolved_tau(), self.condition_hidden, **kwargs)
            else:
                potential = ConditionalICNN(self.in_features_, encoder.out_features, self._resolved_hidden(),
                                            self.condition_hidden, **kwargs)
            potential.body.reset_parameters(generator)
            setattr(self, f"encoder_{prefix}_", encoder.to(device))
            setattr(self, f"{prefix}_", potential.to(device))

    def _bound(self, prefix: str, rows: list[Condition] | None = None,
               summaries: np.ndarray | None = None) -> _Bound:
        """The ``f`` or ``g`` potential bound to condition rows (the training table by default)."""
        rows = self.conditions_ if rows is None else rows
        table = self._table(rows, summaries)
        potential, encoder = getattr(self, f"{prefix}_"), getattr(self, f"encoder_{prefix}_")
        device = next(potential.parameters()).device
        return _Bound(potential, encoder, {k: v.to(device) for k, v in table.items()})

    def _table(self, rows: list[Condition], summaries: np.ndarray | None) -> dict[str, torch.Tensor]:
        singles = np.zeros((len(rows), len(self.singles_)), dtype=np.float32)
        index = {s: i for i, s in enumerate(self.singles_)}
        for r, condition in enumerate(rows):
            for single in self.split_singles(condition.perturbation):
                if single not in index:
                    raise ValueError(
                        f"Perturbation {condition.perturbation!r} contains {single!r}, which was "
                        f"never seen at fit time (alone or in a combination); seen singles: "
                        f"{self.singles_[:20]}{' ...' if len(self.singles_) > 20 else ''}."
                    )
                singles[r, index[single]] = 1.0
        contexts = np.zeros((len(rows), len(self.context_values_)), dtype=np.int64)
        for r, condition in enumerate(rows):
            for j, value in enumerate(condition.context):
                known = self.context_values_[j]
                contexts[r, j] = known.index(value) + 1 if value in known else 0
        if summaries is None:
            summaries = np.stack([self.context_summaries_[c.context] for c in rows])
        doses = np.asarray([c.dose if c.dose is not None else 0.0 for c in rows], dtype=np.float32)
        return {"singles": torch.as_tensor(singles), "contexts": torch.as_tensor(contexts),
                "summaries": torch.as_tensor(summaries, dtype=torch.float32),
                "doses": torch.as_tensor(doses)}

    def _condition_sampler(self, f: _Bound, g: _Bound, source: StackedSamples,
                           target: StackedSamples, generator: torch.Generator,
                           withheld: Sequence[int] = ()):
        """The per-step hook: draw the conditions (and context dropout) of one step;
        ``draw(None)`` (validation, end of training) activates every condition not withheld."""
        allowed = torch.as_tensor([k for k in range(len(self.conditions_)) if k not in withheld])
        n = len(allowed)
        per_step = min(self.conditions_per_step, n)
        has_context = bool(self.context_values_)

        def draw(step: int | None) -> None:
            if step is None:
                active = allowed if len(withheld) else None
                unknown = None
            else:
                active = allowed[torch.randperm(n, generator=generator)[:per_step]].sort().values
                unknown = (torch.rand(per_step, generator=generator) < self.context_dropout
                           if has_context and self.context_dropout > 0 else None)
            device = f.singles.device
            if active is not None:  # moved once per step, for the potentials and the samplers
                active = active.to(device)
            for module in (f, g):
                module.active = active
                module.unknown = None if unknown is None else unknown.to(device)
            for samples in (source, target):
                samples.active = active
        draw.per_step = per_step
        return draw

    def _warm_start(self, f: _Bound, g: _Bound, source: StackedSamples, target: StackedSamples,
                    draw, generator: torch.Generator, linears) -> None:
        device = f.singles.device
        forward = [_affine(lin) for lin in linears]
        backward = [_affine(lin, inverse=True) for lin in linears]
        stacks = {}
        for name, maps in (("f", forward), ("g", backward)):
            stacks[name] = (torch.as_tensor(np.stack([m[0] for m in maps]), dtype=torch.float32, device=device),
                            torch.as_tensor(np.stack([m[1] for m in maps]), dtype=torch.float32, device=device))

        def target_map(name: str, module: _Bound):
            def apply(points: torch.Tensor) -> torch.Tensor:
                matrix, offset = stacks[name]
                if module.active is not None:
                    matrix, offset = matrix[module.active], offset[module.active]
                return points @ matrix + offset.unsqueeze(1)
            return apply

        options = dict(n_steps=self.warm_start_iters, batch_size=self.batch_size,
                       lr=WARM_START_LR, generator=generator, before_step=draw)
        warm_start(f, source, target_map("f", f), **options)
        warm_start(g, target, target_map("g", g), **options)

    def _choose_residual(self, held, linear_train, indices: list[int], train_network: bool,
                         rng: np.random.Generator) -> float:
        if self.residual != "auto":
            return float(self.residual)
        if not train_network or self._selection_fraction == 0:
            return 1.0 if train_network else 0.0
        n_held = sum(min(len(s), len(t)) for s, t in held)
        if n_held < MIN_RESIDUAL_CELLS:
            self.selection_["residual_note"] = (
                f"fewer than {MIN_RESIDUAL_CELLS} held-out points a side: the linear parts are kept")
            return 0.0
        per_condition = max(MAX_SCORED_CELLS // len(held), 2)
        linear, network, observed = [], [], []
        f = self._bound("f")
        for k, (s, t), lin in zip(indices, held, linear_train, strict=True):
            rows_s = rng.permutation(len(s))[:per_condition]
            rows_t = rng.permutation(len(t))[:per_condition]
            points = torch.as_tensor(s[rows_s], device=f.singles.device).unsqueeze(0)
            f.active = torch.tensor([k], device=f.singles.device)
            network.append(potential_gradient(f, points)[0].detach().cpu().numpy().astype(np.float64))
            linear.append(lin.transport(s[rows_s].astype(np.float64)))
            observed.append(t[rows_t].astype(np.float64))
        weight, record = choose_residual(np.concatenate(linear), np.concatenate(network),
                                         np.concatenate(observed), rng)
        self.selection_.update(record)
        return weight

    # ------------------------------------------------------------------ inference
    def condition(self, perturbation: str, context: Sequence[str] | None = None,
                  dose: float | None = None) -> Condition:
        """The :class:`Condition` of a query, checked against what was seen at fit time."""
        self._check_fitted()
        context = tuple(str(v) for v in (context or ()))
        if len(context) != len(self.context_values_):
            raise ValueError(
                f"This map was fitted with {len(self.context_values_)} context covariate(s); got "
                f"context={context!r}."
            )
        with_dose = self.conditions_[0].dose is not None
        if with_dose and dose is None:
            raise ValueError("This map was fitted with doses: pass dose=.")
        if not with_dose and dose is not None:
            raise ValueError("This map was fitted without doses: leave dose=None.")
        if dose is not None:
            dose = float(dose)
            if not math.isfinite(dose):
                raise ValueError(f"dose must be a finite number, got {dose!r}.")
        condition = Condition(self.canonical(perturbation), context, dose)
        self._table([condition], np.zeros((1, 2 * self.in_features_ if self.context_values_ else 0)))
        return condition

    def linear_part(self, condition: Condition) -> tuple[np.ndarray, np.ndarray, str]:
        """``(A, b, kind)`` of the linear part ``x ↦ x A + b`` (standardised, context-centred).

        ``kind`` is ``"seen"`` (the condition's own map), ``"transfer"`` (the same
        perturbation's linear part across the contexts where it was measured, its frame and
        shrinkage chosen by leave-one-context-out at fit time; for another dose, the average
        of its maps at the measured doses) or ``"additive"`` (the identity plus the sum of the
        singles' mean shifts, each averaged over the contexts where the single was measured
        alone, preferring the query's context).
        """
        if condition in self.conditions_:
            matrix, offset = self.linear_[self.conditions_.index(condition)]
            return matrix, offset, "seen"
        if (condition.perturbation, condition.dose) in self.transfer_:
            matrix, offset = self.transfer_[(condition.perturbation, condition.dose)]
            return matrix, offset, "transfer"
        same = [k for k, c in enumerate(self.conditions_) if c.perturbation == condition.perturbation]
        if same:
            return (np.mean([self.linear_[k][0] for k in same], axis=0),
                    np.mean([self.linear_[k][1] for k in same], axis=0), "transfer")
        shift = np.zeros(self.in_features_)
        for single in self.split_singles(condition.perturbation):
            rows = [k for k, c in enumerate(self.conditions_) if c.perturbation == single]
            local = [k for k in rows if self.conditions_[k].context == condition.context]
            if local or rows:
                shift += self.shift_[local or rows].mean(axis=0)
        return np.eye(self.in_features_), shift, "additive"

    def _frame(self, array: np.ndarray, condition: Condition) -> tuple[np.ndarray, np.ndarray]:
        """Centre (the context's control mean) and summary of the query's context."""
        if condition.context in self.context_means_:
            return self.context_means_[condition.context], self.context_summaries_[condition.context]
        if len(array) < MIN_GROUP_POINTS:
            raise ValueError(
                f"Context {condition.context!r} was not seen at fit time, so it is encoded from "
                f"the cells passed: {len(array)} row(s), at least {MIN_GROUP_POINTS} needed. Pass "
                "all control cells of the new context together."
            )
        centre = array.mean(axis=0, dtype=np.float64)
        return centre, _summary(((array - centre) / self.scale_).astype(np.float32))

    def residual_for(self, condition: Condition, kind: str | None = None) -> float:
        """``λ`` used for ``condition``: ``residual_transfer_`` for a perturbation measured in
        other contexts, asked for in a context seen at fit time; else ``residual_weight_``.
        ``kind`` is the linear part's (see :meth:`linear_part`), when already known."""
        kind = self.linear_part(condition)[2] if kind is None else kind
        if kind == "transfer" and condition.context in self.context_means_:
            return float(self.residual_transfer_)
        return float(self.residual_weight_)

    def _apply(self, prefix: str, data, perturbation, context, dose, name: str) -> np.ndarray:
        self._check_fitted()
        array = as_float_array(data, name, n_features=self.in_features_)
        condition = self.condition(perturbation, context, dose)
        centre, summary = self._frame(array, condition)
        standard = (array - centre) / self.scale_
        matrix, offset, kind = self.linear_part(condition)
        weight = self.residual_for(condition, kind)
        out = np.zeros_like(standard, dtype=np.float64)
        if weight > 0:
            bound = self._bound(prefix, [condition], summary[None])
            points = torch.as_tensor(standard, dtype=torch.float32,
                                     device=bound.singles.device).unsqueeze(0)
            out += weight * potential_gradient(bound, points)[0].detach().cpu().numpy()
        if weight < 1:
            if prefix == "g":
                matrix, offset = _invert(matrix, offset)
            out += (1 - weight) * (standard @ matrix + offset)
        return (centre + self.scale_ * out).astype(np.float32)

    def transport(self, x, perturbation: str, *, context: Sequence[str] | None = None,
                  dose: float | None = None) -> np.ndarray:
        """Predict the perturbed state of control cells ``x`` of one context.

        Parameters
        ----------
        x
            ``[n, d]`` control cells of one context (all of them for a context not seen at fit
            time: it is encoded from their summary and they are moved relative to their mean).
        perturbation
            Any label whose singles were seen at fit time (unseen combinations included).
        context
            The context's covariate values (as at fit time).
        dose
            The dose, for maps fitted with doses.
        """
        return self._apply("f", x, perturbation, context, dose, "x")

    def inverse(self, y, perturbation: str, *, context: Sequence[str] | None = None,
                dose: float | None = None) -> np.ndarray:
        """Map perturbed cells back (``∇g`` blended with the inverse linear part).

        The context must have been seen at fit time (its control mean is the frame).
        """
        condition = self.condition(perturbation, context, dose)
        if condition.context not in self.context_means_:
            raise ValueError(f"inverse needs a context seen at fit time, got {condition.context!r}.")
        return self._apply("g", y, perturbation, context, dose, "y")

    def at(self, perturbation: str, context: Sequence[str] | None = None,
           dose: float | None = None) -> FixedConditionMap:
        """The map of one condition, with the ``transport``/``inverse`` interface of ``TransportMap``."""
        return FixedConditionMap(self, self.condition(perturbation, context, dose))

    # ------------------------------------------------------------------ persistence
    def _state_arrays(self, fitted: dict[str, Any]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for prefix in ("f", "g"):
            for part, module in (("potential", getattr(self, f"{prefix}_")),
                                 ("encoder", getattr(self, f"encoder_{prefix}_"))):
                for name, value in module.state_dict().items():
                    arrays[f"{prefix}/{part}/{name}"] = value.detach().cpu().numpy()
        arrays["linear/matrix"] = np.stack([m for m, _ in self.linear_])
        arrays["linear/offset"] = np.stack([b for _, b in self.linear_])
        arrays["shift"] = self.shift_
        transfer = list(self.transfer_)
        if transfer:
            arrays["transfer/matrix"] = np.stack([self.transfer_[k][0] for k in transfer])
            arrays["transfer/offset"] = np.stack([self.transfer_[k][1] for k in transfer])
        arrays["shrinkage"] = self.shrinkage_
        contexts = list(self.context_means_)
        arrays["context/means"] = np.stack([self.context_means_[c] for c in contexts])
        arrays["context/summaries"] = np.stack([self.context_summaries_[c] for c in contexts])
        fitted.update(
            conditions_=[[c.perturbation, list(c.context), c.dose] for c in self.conditions_],
            contexts_=[list(c) for c in contexts], singles_=self.singles_,
            context_values_=self.context_values_, tau_=self.f_.tau,
            transfer_=[[label, dose] for label, dose in transfer],
        )
        return arrays

    def _restore(self, fitted: dict[str, Any], arrays: dict[str, Any],
                 device: torch.device) -> None:
        self.conditions_ = [Condition(str(p), tuple(str(v) for v in c),
                                      None if d is None else float(d))
                            for p, c, d in fitted["conditions_"]]
        self.singles_ = [str(s) for s in fitted["singles_"]]
        self.context_values_ = [[str(v) for v in values] for values in fitted["context_values_"]]
        contexts = [tuple(str(v) for v in c) for c in fitted["contexts_"]]
        means, summaries = np.asarray(arrays["context/means"]), np.asarray(arrays["context/summaries"])
        self.context_means_ = {c: means[i].astype(np.float64) for i, c in enumerate(contexts)}
        self.context_summaries_ = {c: summaries[i].astype(np.float32) for i, c in enumerate(contexts)}
        matrices, offsets = np.asarray(arrays["linear/matrix"]), np.asarray(arrays["linear/offset"])
        self.linear_ = [(matrices[k].astype(np.float64), offsets[k].astype(np.float64))
                        for k in range(len(self.conditions_))]
        self.shift_ = np.asarray(arrays["shift"], dtype=np.float64)
        keys = [(str(label), None if dose is None else float(dose))
                for label, dose in fitted["transfer_"]]
        self.transfer_ = {key: (np.asarray(arrays["transfer/matrix"][i], dtype=np.float64),
                                np.asarray(arrays["transfer/offset"][i], dtype=np.float64))
                          for i, key in enumerate(keys)}
        self.shrinkage_ = np.asarray(arrays["shrinkage"], dtype=float)
        self._build(device, torch.Generator().manual_seed(0))
        for prefix in ("f", "g"):
            for part, module in (("potential", getattr(self, f"{prefix}_")),
                                 ("encoder", getattr(self, f"encoder_{prefix}_"))):
                start = f"{prefix}/{part}/"
                module.load_state_dict({name[len(start):]: torch.as_tensor(np.asarray(value))
                                        for name, value in arrays.items() if name.startswith(start)})
            if fitted.get("tau_") is not None:
                getattr(self, f"{prefix}_").tau = float(fitted["tau_"])


class FixedConditionMap:
    """One condition of a :class:`ConditionalTransportMap`, with ``TransportMap``'s interface.

    ``transport(x)`` and ``inverse(y)`` apply the conditional map at the fixed condition
    (``groups`` and ``batch_size`` are accepted for compatibility and not used).
    """

    def __init__(self, parent: ConditionalTransportMap, condition: Condition) -> None:
        self.parent = parent
        self.condition = condition
        self.residual_weight_ = parent.residual_for(condition)
        self.linear_kind_ = parent.linear_part(condition)[2]
        self.history_ = parent.history_
        self.frame_ = "context"
        index = parent.conditions_.index(condition) if condition in parent.conditions_ else None
        self.shrinkage_ = math.nan if index is None else float(parent.shrinkage_[index])

    def transport(self, x, *, groups=None, batch_size: int | None = None,
                  progress: bool | None = None) -> np.ndarray:
        """Map control cells to the condition's predicted perturbed cells."""
        c = self.condition
        return self.parent.transport(x, c.perturbation, context=c.context, dose=c.dose)

    def inverse(self, y, *, groups=None, batch_size: int | None = None,
                progress: bool | None = None) -> np.ndarray:
        """Map perturbed cells back to controls."""
        c = self.condition
        return self.parent.inverse(y, c.perturbation, context=c.context, dose=c.dose)


# ---------------------------------------------------------------------- helpers
def _convert_pairs(sources, targets) -> list[tuple[np.ndarray, np.ndarray]]:
    converted: dict[int, np.ndarray] = {}

    def convert(array, name):
        if id(array) not in converted:
            converted[id(array)] = as_float_array(array, name).astype(np.float64)
        return converted[id(array)]

    pairs = []
    for k, (source, target) in enumerate(zip(sources, targets, strict=True)):
        s, t = convert(source, f"sources[{k}]"), convert(target, f"targets[{k}]")
        if s.shape[1] != t.shape[1] or (pairs and s.shape[1] != pairs[0][0].shape[1]):
            raise ValueError("Every source and target must have the same number of features.")
        for array, name in ((s, "sources"), (t, "targets")):
            if len(array) < 2:
                raise ValueError(f"{name}[{k}] needs at least 2 points, got {len(array)}.")
        pairs.append((s, t))
    return pairs


class _SharedControls:
    """Per-condition arrays derived from the controls, made once per control population.

    A control population shared by many conditions (the same array object) is transformed,
    split and sliced once, so memory does not grow with the number of conditions.
    """

    def __init__(self, sources: Sequence[np.ndarray]) -> None:
        self._ids = [id(source) for source in sources]
        self._made: dict[tuple[int, str], Any] = {}

    def once(self, k: int, what: str, make: Callable[[], Any]) -> Any:
        """``make()`` for condition ``k``'s controls, computed once per population and ``what``."""
        key = (self._ids[k], what)
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def forget(self, what: str) -> None:
        """Drop the cached ``what`` transforms (intermediates not needed after fitting starts)."""
        self._made = {key: value for key, value in self._made.items() if key[1] != what}


@dataclass
class _Standardised:
    """All conditions' cells centred on their context's control mean, in one common scale,
    with the held-out (selection) masks."""

    standard: list[tuple[np.ndarray, np.ndarray]]
    masks: list[tuple[np.ndarray, np.ndarray]]
    means: dict[tuple[str, ...], np.ndarray]
    summaries: dict[tuple[str, ...], np.ndarray]
    scale: float
    shared: _SharedControls

    def training_samples(self, device: torch.device, select: bool, withheld: Sequence[int] = ()):
        """``(source, target, held, validation)``: training clouds, held-out pairs (the
        training cells where too few were held out) and the validation data (None without
        selection) of every condition not ``withheld``, in order: the conditions withheld from
        network training to choose ``λ`` for transfers do not take part in training decisions."""
        once, pairs = self.shared.once, list(zip(self.standard, self.masks, strict=True))
        source = StackedSamples([once(k, "train", lambda s=s, m=m: s[~m[0]] if (~m[0]).sum() >= 2 else s)
                                 for k, ((s, _), m) in enumerate(pairs)], device)
        target = StackedSamples([t[~m[1]] if (~m[1]).sum() >= 2 else t for (_, t), m in pairs],
                                device)
        held = [(once(k, "held", lambda s=s, m=m: s[m[0]] if m[0].sum() >= MIN_VALIDATION_POINTS else s),
                 t[m[1]] if m[1].sum() >= MIN_VALIDATION_POINTS else t)
                for k, ((s, t), m) in enumerate(pairs)]
        validation = None
        if select:
            validated = [(k, pair) for k, pair in enumerate(held) if k not in withheld]
            validation = (StackedSamples([once(k, "validation", lambda s=s: s[:MAX_VALIDATION_POINTS])
                                          for k, (s, _) in validated], device),
                          [torch.as_tensor(t[:MAX_VALIDATION_POINTS], device=device)
                           for _, (_, t) in validated])
        return source, target, held, validation


def _standardise(arrays: list[tuple[np.ndarray, np.ndarray]], context_keys: list[tuple[str, ...]],
                 fraction: float, rng: np.random.Generator) -> _Standardised:
    """Centre every pair on its context's control mean, scale all by one pooled scale, and
    draw the held-out masks."""
    shared = _SharedControls([source for source, _ in arrays])
    once = shared.once
    means: dict[tuple[str, ...], np.ndarray] = {}
    for k, key in enumerate(context_keys):
        means.setdefault(key, arrays[k][0].mean(axis=0, dtype=np.float64))
    scale = _pooled_scale([(once(k, "centred", lambda k=k, c=key: arrays[k][0] - means[c]),
                            arrays[k][1] - means[key]) for k, key in enumerate(context_keys)])
    shared.forget("centred")  # float64 copies of the controls, needed for the scale only
    standard = [(once(k, "standard", lambda k=k, c=key: ((arrays[k][0] - means[c]) / scale)
                      .astype(np.float32)),
                 ((arrays[k][1] - means[key]) / scale).astype(np.float32))
                for k, key in enumerate(context_keys)]
    summaries = {key: _summary(standard[context_keys.index(key)][0]) for key in means}
    masks = [(once(k, "mask", lambda s=s: _held_mask(len(s), fraction, rng)),
              _held_mask(len(t), fraction, rng))
             for k, (s, t) in enumerate(standard)]
    return _Standardised(standard, masks, means, summaries, scale, shared)


def _pooled_scale(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Root mean feature variance of all (context-centred) pairs pooled, shared arrays counted
    once per pair, computed from sums (no concatenated copy)."""
    n, total, squares = 0, 0.0, 0.0
    for source, target in pairs:
        for array in (source, target):
            n += len(array)
            total = total + array.sum(axis=0)
            squares = squares + np.square(array).sum(axis=0)
    variance = float(np.mean(squares / n - np.square(total / n)))
    if not math.isfinite(variance) or variance <= 1e-12:
        raise ValueError("The pairs have (near) zero variance: there is nothing to transport.")
    return math.sqrt(variance)


def _summary(standard: np.ndarray) -> np.ndarray:
    """Permutation-invariant summary of control cells: mean and log standard deviation."""
    std = np.maximum(standard.std(axis=0), SUMMARY_FLOOR)
    return np.concatenate([standard.mean(axis=0), np.log(std)]).astype(np.float32)


def shrunk_mean_shift(source_mean: np.ndarray, source_noise: float, target_mean: np.ndarray,
                      target_noise: float) -> np.ndarray:
    """Mean shift ``ȳ − x̄`` shrunk towards zero by the positive-part James–Stein rule.

    ``*_noise`` is the sampling variance of each mean summed over the ``d`` features
    (``Σⱼ var(xⱼ) / n``, as ``_moments`` returns it). With ``v`` their sum, the shift is
    multiplied by ``max(0, 1 − (d − 2) v / (d ‖ȳ − x̄‖²))``: a shift no larger than its noise
    becomes (close to) zero, a clear one is barely touched. This is what makes the additive
    prediction of a combination robust to a single whose effect was not measurable (on the
    Perturb-seq K562 doubles it lowered the held-out energy distance of every double with a
    real effect below the better single's; see ``benchmarks/results_conditional.txt``). With
    ``d < 3`` the rule does not apply and the raw shift is returned.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> control = _moments(rng.normal(size=(100, 30)))
    >>> noise_only = _moments(rng.normal(size=(100, 30)))  # raw shift norm 0.84: sampling noise
    >>> round(float(np.linalg.norm(shrunk_mean_shift(*control, *noise_only))), 2)
    0.19
    >>> clear = _moments(rng.normal(size=(100, 30)) + 3.0)  # raw shift norm 16.76
    >>> round(float(np.linalg.norm(shrunk_mean_shift(*control, *clear))), 2)
    16.73
    """
    shift = target_mean - source_mean
    d = shift.shape[0]
    if d < 3:
        return shift
    norm = float(shift @ shift)
    noise = source_noise + target_noise
    factor = max(0.0, 1.0 - (d - 2) * noise / (d * norm)) if norm > 0 else 0.0
    return factor * shift


def _moments(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean (float64) of the rows and its sampling variance summed over the features
    (0 for a single row)."""
    mean = points.mean(axis=0, dtype=np.float64)
    if len(points) < 2:
        return mean, 0.0
    return mean, float(points.var(axis=0, ddof=1, dtype=np.float64).sum()) / len(points)


def _held_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(n, bool)
    n_held = round(fraction * n)
    if n_held >= MIN_VALIDATION_POINTS and n - n_held >= 2:
        mask[rng.permutation(n)[:n_held]] = True
    return mask


def _affine(linear, inverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``T(x) = x A + b`` of a :class:`GaussianTransportMap` (or its inverse)."""
    m0, m1 = linear.mean_source_, linear.mean_target_
    if inverse:
        matrix = linear.inverse_matrix_
        return matrix, m0 - m1 @ matrix
    matrix = linear.matrix_
    return matrix, m1 - m0 @ matrix


def _invert(matrix: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inverse = np.linalg.inv(matrix)
    return inverse, -offset @ inverse
