"""DAdaptSGD against dadaptation 3.2 and its golden runs, and the two crashes it fixes."""

from __future__ import annotations

import dadaptation
import pytest
import torch

import fastoptim


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _backward(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    model(torch.randn(16, 5, generator=generator)).pow(2).mean().backward()


def test_all_zero_first_gradient_skips_instead_of_dividing_by_zero() -> None:
    for cls in (dadaptation.DAdaptSGD, fastoptim.DAdaptSGD):
        model = _model()
        optimizer = cls(model.parameters())
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        if cls is dadaptation.DAdaptSGD:
            with pytest.raises(ZeroDivisionError):
                optimizer.step()
            continue
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        assert optimizer.param_groups[0]["k"] == 0
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        _backward(model, 0)
        optimizer.step()
        assert optimizer.param_groups[0]["k"] == 1 and optimizer.param_groups[0]["g0_norm"] > 0


def test_schedule_reaching_zero_does_not_crash() -> None:
    for cls in (dadaptation.DAdaptSGD, fastoptim.DAdaptSGD):
        model = _model()
        optimizer = cls(model.parameters(), d0=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / 2))
        for seed in range(2):
            _backward(model, seed)
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == 0.0
        _backward(model, 5)
        if cls is dadaptation.DAdaptSGD:
            with pytest.raises(UnboundLocalError):
                optimizer.step()
            continue
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
