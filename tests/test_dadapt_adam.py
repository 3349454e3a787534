"""DAdaptAdam against dadaptation 3.2 and its golden runs."""

from __future__ import annotations

import logging

import pytest
import torch

import fastoptim
from tests.problems import backward_random_batch, tiny_mlp


def test_zero_gradients_do_not_divide_by_zero_or_move() -> None:
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = fastoptim.DAdaptAdam(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert optimizer.param_groups[0]["k"] == 0 and optimizer.param_groups[0]["d"] == 1e-6
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_log_every_logs_d(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_mlp()
    optimizer = fastoptim.DAdaptAdam(model.parameters(), log_every=2)
    with caplog.at_level(logging.INFO, logger="fastoptim"):
        for seed in range(4):
            backward_random_batch(model, seed)
            optimizer.step()
    assert len([r for r in caplog.records if "d_hat" in r.getMessage()]) == 2


def test_group_lr_rule_points_to_layer_scale() -> None:
    model = tiny_mlp()
    optimizer = fastoptim.DAdaptAdam(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.3}]
    )
    backward_random_batch(model, 0)
    with pytest.raises(RuntimeError, match="layer_scale"):
        optimizer.step()


def test_bad_arguments() -> None:
    for kwargs, name in (
        (dict(lr=0.0), "lr"),
        (dict(d0=0.0), "d0"),
        (dict(eps=0.0), "eps"),
        (dict(log_every=-1), "log_every"),
        (dict(betas=(1.0, 0.9)), r"betas\[0\]"),
        (dict(growth_rate=0.9), "growth_rate"),
    ):
        with pytest.raises(ValueError, match=name):
            fastoptim.DAdaptAdam(tiny_mlp().parameters(), **kwargs)
    with pytest.raises(ValueError, match="gradient_release"):
        fastoptim.DAdaptAdam(tiny_mlp().parameters(), gradient_release=True)
