"""``torch_compile``: the compiled training step, its automatic use, fallback and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import TINY

import hycnn_sc.models._minimax as minimax
from hycnn_sc.models import TransportMap


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(300, 3))
    return source, np.tanh(source) * 2 + 1


@pytest.fixture
def fresh_compile_state(monkeypatch):
    """Forget any compile failure recorded by an earlier test in this process."""
    monkeypatch.setattr(minimax, "_compile_failure", None)


def _fit(data, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return TransportMap(**{**TINY, "residual": 1.0, "seed": 0, **params}).fit(*data)


@pytest.mark.parametrize("bad", ["yes", 1, None, "True"])
def test_torch_compile_must_be_a_bool_or_auto(data, bad):
    with pytest.raises(ValueError, match="torch_compile must be True, False or 'auto'"):
        TransportMap(torch_compile=bad).fit(*data)


def test_torch_compile_true_refuses_a_tau_schedule(data):
    with pytest.raises(ValueError, match="torch_compile=True cannot be combined with tau_schedule"):
        TransportMap(torch_compile=True, tau_schedule="cosine", n_iters=10).fit(*data)


def test_auto_compiles_only_long_schedules(data, monkeypatch, fresh_compile_state):
    calls = []

    def spy(function, **options):
        calls.append(options)
        return function  # "compiled" = the eager function itself

    monkeypatch.setattr(torch, "compile", spy)
    _fit(data, torch_compile="auto")  # 10 iterations
    assert calls == []
    monkeypatch.setattr(minimax, "COMPILE_MIN_ITERS", 10)
    compiled = _fit(data, torch_compile="auto")
    assert len(calls) == 2  # the inner and the outer loss
    calls.clear()
    eager = _fit(data, torch_compile=False)
    assert calls == []
    # the trial pass of the compiled losses touches neither the weights nor the training draws
    np.testing.assert_array_equal(compiled.history_["loss_f"], eager.history_["loss_f"])
    np.testing.assert_array_equal(compiled.transport(data[0][:20]), eager.transport(data[0][:20]))


def test_cycles_report_a_compiled_step(data, monkeypatch, fresh_compile_state):
    from hycnn_sc.models import _estimator

    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    monkeypatch.setattr(minimax, "COMPILE_MIN_ITERS", 20)
    monkeypatch.setattr(_estimator, "AUTO_FIRST_CYCLE", 10)
    results = []
    original = minimax.train_in_cycles

    def record(*args, **kwargs):
        results.append(original(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(_estimator, "train_in_cycles", record)
    _fit(data, n_iters="auto")
    assert results and results[0].compiled  # a cycle of 20 or more iterations ran compiled


@pytest.mark.parametrize("error", [RuntimeError("Dynamo is not supported on Python 3.15+"),
                                   AssertionError()])
def test_compile_refused_at_once_falls_back(data, monkeypatch, fresh_compile_state, error):
    def refuses(function, **options):
        raise error

    monkeypatch.setattr(torch, "compile", refuses)
    with pytest.warns(RuntimeWarning, match=rf"torch.compile failed \({type(error).__name__}"):
        TransportMap(**{**TINY, "residual": 1.0, "seed": 0, "torch_compile": True}).fit(*data)
    with pytest.warns(RuntimeWarning, match="failed earlier in this process"):  # asked again
        TransportMap(**{**TINY, "residual": 1.0, "seed": 0, "torch_compile": True}).fit(*data)


def test_a_failing_compiler_falls_back_to_the_eager_step(data, monkeypatch, fresh_compile_state):
    def broken(function, **options):
        def fails(*args):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fails

    eager = _fit(data, torch_compile=False)
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler"):
        fallback = TransportMap(**{**TINY, "residual": 1.0, "seed": 0, "torch_compile": True}).fit(*data)
    np.testing.assert_array_equal(fallback.history_["loss_f"], eager.history_["loss_f"])
    np.testing.assert_array_equal(fallback.transport(data[0][:20]), eager.transport(data[0][:20]))
    second = []  # a failure is remembered: the next fit does not try again
    monkeypatch.setattr(torch, "compile", lambda function, **o: second.append(1) or function)
    _fit(data, torch_compile=True)
    assert second == []


def test_out_of_memory_while_compiling_is_not_remembered(data, monkeypatch, fresh_compile_state):
    def out_of_memory(function, **options):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "compile", out_of_memory)
    with pytest.warns(RuntimeWarning, match="OutOfMemoryError"):
        TransportMap(**{**TINY, "residual": 1.0, "seed": 0, "torch_compile": True}).fit(*data)
    assert minimax._compile_failure is None


def test_compiled_step_trains_as_the_eager_one(data, fresh_compile_state):
    eager = _fit(data, torch_compile=False)
    compiled = _fit(data, torch_compile=True)
    if minimax._compile_failure is not None:
        pytest.skip(f"torch.compile is not available here: {minimax._compile_failure}")
    np.testing.assert_allclose(compiled.history_["loss_f"], eager.history_["loss_f"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(compiled.transport(data[0][:50]), eager.transport(data[0][:50]),
                               rtol=1e-4, atol=1e-4)
