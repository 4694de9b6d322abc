"""Schedules for the HyCNN gate temperature ``tau`` and the learning rate."""

from __future__ import annotations

import math

from ._options import TAU_SCHEDULES, TauSchedule


def check_tau_schedule(schedule: TauSchedule | None, tau: float, tau_final: float, cycles: int) -> None:
    """Validate tau-schedule arguments, raising a ValueError that names the bad one."""
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"Unknown tau_schedule {schedule!r}; choose one of {TAU_SCHEDULES}.")
    if tau_final < 0 or tau_final > tau:
        raise ValueError(f"tau_final must lie in [0, tau={tau}], got {tau_final!r}.")
    if int(cycles) < 1:
        raise ValueError(f"tau_cycles must be >= 1, got {cycles!r}.")


def tau_at(
    step: int, n_steps: int, *, tau: float, schedule: TauSchedule | None, tau_final: float = 0.0, cycles: int = 1
) -> float:
    """Gate temperature at ``step`` of ``n_steps``.

    ``None``/``"constant"`` keep ``tau``; ``"cosine"`` anneals from ``tau`` to ``tau_final``;
    ``"cosine_restarts"`` repeats that anneal ``cycles`` times (SGDR-style warm restarts), so
    training alternates between smooth, easy-to-optimise potentials and sharper ones.

    Examples
    --------
    >>> tau_at(0, 100, tau=1.0, schedule="cosine"), tau_at(100, 100, tau=1.0, schedule="cosine")
    (1.0, 0.0)
    """
    if schedule in (None, "constant"):
        return tau
    period = n_steps / (cycles if schedule == "cosine_restarts" else 1)
    phase = step / max(period, 1e-12)
    if schedule == "cosine_restarts" and step < n_steps:
        phase -= math.floor(phase)
    phase = min(phase, 1.0)
    return tau_final + (tau - tau_final) * 0.5 * (1.0 + math.cos(math.pi * phase))


def cosine_factor(step: int, n_steps: int, final_fraction: float) -> float:
    """Learning-rate multiplier decaying by a half cosine from 1 to ``final_fraction``."""
    progress = min(step / max(n_steps, 1), 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
