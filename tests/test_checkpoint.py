"""Checkpoint resume: N steps, save, fresh optimizer, load, M steps == N + M uninterrupted."""

from __future__ import annotations

import io

import pytest
import torch

import fastoptim
from fastoptim.reduction import ONE_PASS_KEY
from tests.cases import CASES, Case, backend_variants
from tests.problems import make_batches, make_model, params_of, train, twin

N, M = 5, 5


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _schedule(optimizer):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=N + M)


def _resumes() -> list[tuple[Case, torch.dtype, str, str]]:
    """Every backend of the harness resumes its own checkpoint, and trades checkpoints with the loop."""
    runs = []
    for dtype in (torch.float32, torch.bfloat16):
        for case, backend in backend_variants(CASES, dtype):
            runs.append((case, dtype, backend, backend))
            if backend != "loop":
                runs += [(case, dtype, backend, "loop"), (case, dtype, "loop", backend)]
    return runs


@pytest.mark.parametrize(("case", "dtype", "save_backend", "load_backend"), _resumes(), ids=str)
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


def test_a_resumed_one_pass_optimizer_steps_in_one_pass_until_its_states_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checkpoint says the last reduction was informative; a state touched after loading voids it."""
    one_pass = fastoptim.reduction.apply_one_pass
    calls: list[int] = []
    counted = lambda *args: calls.append(1) or one_pass(*args)  # noqa: E731
    monkeypatch.setattr(fastoptim.reduction, "apply_one_pass", counted)
    model = make_model()
    optimizer = fastoptim.DAdaptSGD(model.parameters(), backend="loop")
    train(model, optimizer, make_batches(3))
    saved = _roundtrip(optimizer.state_dict())
    assert ONE_PASS_KEY in saved
    for touch in (False, True):
        resumed = fastoptim.DAdaptSGD(model.parameters(), backend="loop")
        resumed.load_state_dict(saved)
        if touch:
            next(iter(resumed.state.values()))["s"].mul_(1.0)
        calls.clear()
        train(model, resumed, make_batches(1))
        assert bool(calls) is not touch
