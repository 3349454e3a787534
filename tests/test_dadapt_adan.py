"""DAdaptAdan against dadaptation 3.2 and its golden runs."""

from __future__ import annotations

import contextlib
import io

import dadaptation
import pytest
import torch

import fastoptim
from tests.reference import golden

RUNS = golden.runs("dadapt_adan", lambda run, spec: False)


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("run", RUNS)
def test_golden_runs_and_official_package(run: str, backend: str) -> None:
    ours, gold, optimizer = golden.replay("dadapt_adan", run, fastoptim.DAdaptAdan, backend=backend)
    official, _, official_optimizer = golden.replay("dadapt_adan", run, dadaptation.DAdaptAdan)
    assert golden.max_diff(ours, official) == 0
    for key in ("d", "k", "gsq_weighted"):
        assert optimizer.param_groups[0][key] == pytest.approx(
            official_optimizer.param_groups[0][key], rel=1e-12
        )
    assert golden.max_diff(ours, gold) <= golden.max_diff(official, gold) + 1e-9


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
