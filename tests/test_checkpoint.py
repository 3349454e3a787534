"""Checkpoint resume: N steps, save, fresh optimizer, load, M steps == N + M uninterrupted."""

from __future__ import annotations

import io

import pytest
import torch

from tests.cases import CASES, Case
from tests.problems import make_batches, make_model, params_of, train, twin

N, M = 5, 5


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _schedule(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=N + M)


@pytest.mark.parametrize(
    ("save_backend", "load_backend"), [("loop", "loop"), ("foreach", "loop"), ("loop", "foreach")]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_resume_is_identical(case: Case, dtype: torch.dtype, save_backend: str, load_backend: str) -> None:
    base = make_model(dtype)
    batches = make_batches(N + M, dtype)
    uninterrupted = twin(base)
    optimizer = case.build(uninterrupted.parameters(), backend=save_backend)
    train(uninterrupted, optimizer, batches, scheduler=_schedule(optimizer))

    resumed = twin(base)
    first = case.build(resumed.parameters(), backend=save_backend)
    first_scheduler = _schedule(first)
    train(resumed, first, batches[:N], scheduler=first_scheduler)
    saved = _roundtrip({"optimizer": first.state_dict(), "scheduler": first_scheduler.state_dict()})
    del first, first_scheduler

    second = case.build(resumed.parameters(), backend=load_backend)
    second_scheduler = _schedule(second)
    second.load_state_dict(saved["optimizer"])
    second_scheduler.load_state_dict(saved["scheduler"])
    train(resumed, second, batches[N:], scheduler=second_scheduler)
    assert second.backend == load_backend

    for a, b in zip(params_of(uninterrupted), params_of(resumed), strict=True):
        if save_backend == load_backend:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_state_dict_layout() -> None:
    model = make_model()
    optimizer = CASES[0].build(model.parameters())
    train(model, optimizer, make_batches(2))
    state = optimizer.state_dict()
    assert set(state) == {"state", "param_groups"}
    first = state["state"][0]
    assert first["step"] == 2
    assert set(first) == {"step", "exp_avg", "exp_avg_sq"}
    assert "backend" not in state["param_groups"][0]
