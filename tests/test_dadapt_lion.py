"""DAdaptLion against dadaptation 3.2 and its golden runs, and the frozen-group fix."""

from __future__ import annotations

import dadaptation
import torch

import fastoptim


def test_lr_zero_group_is_frozen() -> None:
    """Official bug: lr = 0 groups take the full step (and feed the estimate)."""
    moved = {}
    for name, cls in (("official", dadaptation.DAdaptLion), ("ours", fastoptim.DAdaptLion)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        frozen = model[2].weight.detach().clone()
        optimizer = cls(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], d0=1e-3
        )
        for seed in range(3):
            generator = torch.Generator().manual_seed(seed)
            model.zero_grad()
            model(torch.randn(16, 5, generator=generator)).pow(2).mean().backward()
            optimizer.step()
        moved[name] = (model[2].weight.detach() - frozen).abs().max().item()
    assert moved["official"] > 1e-3
    assert moved["ours"] == 0.0
