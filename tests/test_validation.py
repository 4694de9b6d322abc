"""Tests of ``hycnn_sc._validation``: the one home of array, number, seed and JSON checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from hycnn_sc._validation import (
    as_float_array,
    check_array,
    check_finite,
    check_positive,
    check_real_dtype,
    check_seed,
    check_shape,
    json_default,
    make_generator,
    to_numpy,
)


def test_to_numpy_accepts_tensors_sparse_and_lists() -> None:
    expected = np.array([[1.0, 0.0], [0.0, 2.0]])
    for value in (torch.tensor(expected), sp.csr_matrix(expected), expected.tolist()):
        np.testing.assert_array_equal(to_numpy(value), expected)


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint16, np.float32, np.float64])
def test_real_dtypes_pass(dtype) -> None:
    check_real_dtype(np.dtype(dtype), "x")
    check_real_dtype(torch.float16, "x")


@pytest.mark.parametrize("dtype", [np.complex64, object, "U3", "datetime64[s]", None])
def test_other_dtypes_raise(dtype) -> None:
    with pytest.raises(TypeError, match=r"it must hold real numbers.*Convert it"):
        check_real_dtype(None if dtype is None else np.dtype(dtype), "x", " Convert it.")
    with pytest.raises(TypeError, match="real numbers"):
        check_real_dtype(torch.complex64, "x")


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((3,), {}, r"x must be 2-D .* got shape \(3,\); reshape 1-D data with x\[:, None\]"),
        ((3, 0), {}, r"x has no features \(shape \(3, 0\)\)"),
        ((1, 2), {"min_rows": 2, "why": " to estimate a covariance"},
         r"x has 1 row\(s\); at least 2 are needed to estimate a covariance\."),
        ((0, 2), {}, r"x has 0 row\(s\); at least 1 are needed"),
        ((3, 2), {"n_features": 4}, r"x has 2 features but the model was fitted on 4; pass"),
        ((3, 2), {"n_features": 4, "reference": "`y` has"}, r"x has 2 features but `y` has 4"),
    ],
)
def test_check_shape_names_the_problem(shape, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_shape(shape, "x", **kwargs)


def test_check_shape_strips_quotes_in_the_reshape_hint() -> None:
    with pytest.raises(ValueError, match=r"`x` must be 2-D.*with x\[:, None\]"):
        check_shape((3,), "`x`")


@pytest.mark.parametrize("make", [np.asarray, torch.as_tensor])
def test_check_finite_counts_bad_rows(make) -> None:
    values = np.ones((5, 2))
    values[1, 0], values[3, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"x holds NaN or infinite values in 2 of 5 rows"):
        check_finite(make(values), "x")
    check_finite(make(np.ones((5, 2))), "x")


def test_check_array_and_as_float_array() -> None:
    out = as_float_array(sp.csr_matrix(np.eye(3)), "x", n_features=3)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(check_array([[1, 2]], "x"), np.array([[1, 2]]))
    with pytest.raises(TypeError, match="real numbers"):
        check_array([["a", "b"]], "x")
    with pytest.raises(ValueError, match="fitted on 3"):
        as_float_array(np.zeros((2, 2)), "x", n_features=3)
    with pytest.raises(ValueError, match="NaN or inf"):
        as_float_array([[np.nan, 1.0]], "x")


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "match"),
    [
        (0, {}, ValueError, r"lr must be > 0, got 0"),
        (-1, {"allow_zero": True}, ValueError, r"lr must be >= 0"),
        (np.inf, {}, ValueError, r"lr must be > 0, got inf"),
        (1.5, {"integer": True}, TypeError, r"lr must be an integer"),
        (True, {}, TypeError, r"lr must be a number"),
        ("1", {}, TypeError, r"lr must be a number"),
    ],
)
def test_check_positive(value, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        check_positive(value, "lr", **kwargs)


def test_check_positive_accepts() -> None:
    check_positive(0, "n", integer=True, allow_zero=True)
    check_positive(np.float32(0.5), "lr")


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seeds(seed) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int or None"):
        check_seed(seed)
    with pytest.raises(ValueError, match="seed must be a non-negative int or None"):
        make_generator(seed)


def test_seeds_and_generators() -> None:
    assert check_seed(np.int64(7)) == 7
    drawn = check_seed(None)
    assert isinstance(drawn, int) and drawn >= 0
    generator, seed = make_generator(5)
    assert seed == 5
    assert torch.equal(torch.rand(3, generator=generator),
                       torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_json_default() -> None:
    text = json.dumps({"a": np.float32(0.5), "b": np.bool_(True)}, default=json_default)
    assert json.loads(text) == {"a": 0.5, "b": True}
    with pytest.raises(TypeError, match="ndarray is not JSON serialisable"):
        json.dumps({"a": np.zeros(2)}, default=json_default)
