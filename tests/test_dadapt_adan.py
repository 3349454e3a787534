"""DAdaptAdan against dadaptation 3.2 and its golden runs."""

from __future__ import annotations

import contextlib
import io

import dadaptation
import torch

import fastoptim


def test_restart_matches_official() -> None:
    results = []
    for cls in (dadaptation.DAdaptAdan, fastoptim.DAdaptAdan):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        optimizer = cls(model.parameters(), d0=1e-3)
        for seed in range(6):
            generator = torch.Generator().manual_seed(seed)
            model.zero_grad()
            model(torch.randn(16, 5, generator=generator)).pow(2).mean().backward()
            with contextlib.redirect_stdout(io.StringIO()):
                optimizer.step()
            if seed == 2:
                optimizer.restart_opt()
        results.append([p.detach().clone() for p in model.parameters()])
        assert optimizer.param_groups[0]["k"] == 6
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
