"""Warnings point at the user's line, however deep inside the package they are raised."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import TINY, TINY_FIT

import hycnn_sc.models._minimax as minimax
from hycnn_sc._warnings import warn_user
from hycnn_sc.models import ConditionalTransportMap, GaussianTransportMap, TransportMap
from hycnn_sc.tl import fit_transport


def _warnings_of(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return caught


def _assert_points_here(caught, category, match: str) -> None:
    found = [w for w in caught if issubclass(w.category, category) and match in str(w.message)]
    assert found, [str(w.message) for w in caught]
    assert all(w.filename == __file__ for w in found), [(w.filename, w.lineno) for w in found]


def test_warn_user_from_outside_the_package_points_at_its_caller():
    caught = _warnings_of(lambda: warn_user("look here", RuntimeWarning))
    _assert_points_here(caught, RuntimeWarning, "look here")


@pytest.fixture
def never_converged(monkeypatch):
    """Every fit reports that its held-out criterion was still improving."""
    monkeypatch.setattr(minimax, "_converged",
                        lambda checks, profiles, shared: np.zeros(len(profiles[0]), dtype=bool))


def test_not_converged_warning_of_the_estimators_points_at_fit(never_converged):
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 1
    caught = _warnings_of(lambda: TransportMap(**{**TINY, "residual": 1.0}).fit(source, target))
    _assert_points_here(caught, RuntimeWarning, "had not converged")
    caught = _warnings_of(lambda: ConditionalTransportMap(**{**TINY, "residual": 1.0}).fit(
        [source, source], [target, target + 1], ["A", "B"]))
    _assert_points_here(caught, RuntimeWarning, "had not converged")


@pytest.mark.parametrize("conditional", [False, True])
def test_warnings_of_fit_transport_point_at_the_users_call(kang, never_converged, conditional):
    call = {k: v for k, v in TINY_FIT.items() if k != "holdout_fraction"}
    caught = _warnings_of(lambda: fit_transport(
        kang, groupby="condition", source="control", seed=0, residual=1.0,
        conditional=conditional, validation_fraction=0.2, **call))
    _assert_points_here(caught, RuntimeWarning, "had not converged")
    _assert_points_here(caught, FutureWarning, "validation_fraction")


def test_deprecation_warning_of_a_method_points_at_the_call():
    state = GaussianTransportMap().fit(np.eye(3) + 1, np.eye(3)).get_state()
    caught = _warnings_of(lambda: GaussianTransportMap.from_dict(state))
    _assert_points_here(caught, FutureWarning, "from_dict is deprecated")
