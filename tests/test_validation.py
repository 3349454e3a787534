"""Bad input raises an error that names the argument."""

from __future__ import annotations

import math

import pytest
import torch

import fastoptim


def _params():
    return [torch.nn.Parameter(torch.randn(3, 2))]


BAD_HYPERPARAMETERS = [
    (fastoptim.Adam, dict(lr=-1e-3), ValueError, "lr"),
    (fastoptim.Adam, dict(lr=math.nan), ValueError, "lr"),
    (fastoptim.Adam, dict(lr="0.1"), TypeError, "lr"),
    (fastoptim.Adam, dict(lr=torch.tensor([1e-3, 2e-3])), ValueError, "lr"),
    (fastoptim.Adam, dict(lr=1e-3, betas=(1.0, 0.99)), ValueError, r"betas\[0\]"),
    (fastoptim.Adam, dict(lr=1e-3, betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (fastoptim.Adam, dict(lr=1e-3, betas=(0.9,)), ValueError, "betas"),
    (fastoptim.Adam, dict(lr=1e-3, eps=-1e-8), ValueError, "eps"),
    (fastoptim.Adam, dict(lr=1e-3, weight_decay=-0.1), ValueError, "weight_decay"),
    (fastoptim.AdamW, dict(lr=1e-3, weight_decay=math.inf), ValueError, "weight_decay"),
    (fastoptim.AdamW, dict(lr=0.0, decouple_lr=True), ValueError, "max_lr"),
    (fastoptim.AdamW, dict(lr=1e-3, decouple_lr=True, max_lr=0.0), ValueError, "max_lr"),
    (fastoptim.AdamW, dict(lr=1e-3, decouple_lr=True, max_lr=-1.0), ValueError, "max_lr"),
    (fastoptim.Adam, dict(lr=1e-3, decouple_wd=1), TypeError, "decouple_wd"),
    (fastoptim.Adam, dict(lr=1e-3, kahan_sum="yes"), TypeError, "kahan_sum"),
    (fastoptim.Adam, dict(lr=1e-3, backend="cuda"), ValueError, "backend"),
    (fastoptim.Adam, dict(lr=1e-3, backend="triton"), ValueError, "backend"),
    (fastoptim.Adam, dict(lr=1e-3, backend="loop", foreach=True), ValueError, "foreach"),
    (fastoptim.Adam, dict(lr=1e-3, gradient_release=None), TypeError, "gradient_release"),
    (fastoptim.SGD, dict(lr=-0.1), ValueError, "lr"),
    (fastoptim.SGD, dict(lr=0.1, momentum=1.0), ValueError, "momentum"),
    (fastoptim.SGD, dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (fastoptim.SGD, dict(lr=0.1, momentum=0.9, dampening=1.5), ValueError, "dampening"),
    (fastoptim.SGD, dict(lr=0.1, nesterov=True), ValueError, "nesterov"),
    (fastoptim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
    (fastoptim.Lion, dict(lr=1e-4, betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (fastoptim.Lion, dict(lr=1e-4, weight_decay=-1.0), ValueError, "weight_decay"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "name"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters(cls, kwargs, error, name) -> None:
    with pytest.raises(error, match=name):
        cls(_params(), **kwargs)


def test_bad_hyperparameter_in_a_param_group() -> None:
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        fastoptim.Adam([{"params": _params(), "betas": (0.9, 1.5)}], lr=1e-3)
    optimizer = fastoptim.Adam(_params(), lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        optimizer.add_param_group({"params": _params(), "lr": -1.0})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize(
    ("params", "error", "name"),
    [
        ([1.0, 2.0], TypeError, "params"),
        ([torch.zeros(2, dtype=torch.int64)], TypeError, "params"),
        ([torch.zeros(2, dtype=torch.int8, requires_grad=False)], TypeError, "params"),
        ({torch.zeros(2, requires_grad=True)}, TypeError, "params"),
    ],
)
def test_bad_params(params, error, name) -> None:
    with pytest.raises(error, match=name):
        fastoptim.Adam(params, lr=1e-3)


def test_duplicate_params_say_where_they_are() -> None:
    shared, other = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="parameter 0 of this group is already parameter 0 in param group 0"):
        fastoptim.Adam([{"params": [shared]}, {"params": [shared]}], lr=1e-3)
    with pytest.raises(
        ValueError, match="parameter 2 of this group is already parameter 0 earlier in this group"
    ):
        fastoptim.Adam([shared, other, shared], lr=1e-3)
    optimizer = fastoptim.Adam([other, shared], lr=1e-3)
    with pytest.raises(ValueError, match="already parameter 1 in param group 0"):
        optimizer.add_param_group({"params": [shared]})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("cls", [fastoptim.Adam, fastoptim.AdamW, fastoptim.SGD, fastoptim.Lion])
def test_sparse_gradients_are_rejected_before_any_change(cls) -> None:
    dense = torch.nn.Parameter(torch.randn(4, 3))
    sparse = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = cls([dense, sparse], lr=1e-2)
    dense.grad = torch.randn(4, 3)
    sparse.grad = torch.randn(4, 3).to_sparse()
    before = dense.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()
    assert torch.equal(dense, before)
    assert len(optimizer.state) == 0
