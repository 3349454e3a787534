"""Checkpoint resume: N steps, save, fresh optimizer, load, M steps == N + M uninterrupted."""

from __future__ import annotations

import io

import pytest
import torch

from tests.cases import CASES, COMPILING_BACKENDS, Case, backend_variants
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


def _known_compiled_one_pass_deviation(case: Case, dtype: torch.dtype, save: str, load: str) -> bool:
    """A resumed ONE_PASS optimizer (the D-Adaptation ones) has no record that its last reduction was
    informative (load_state_dict resets it, and the states are new tensors), so its first step after
    the resume runs the reduction and the update as two passes where the uninterrupted run fuses
    them into one. The loop runner's two passes equal its one pass bit for bit; the compiled
    runner's round differently (about 1e-7 in float32; bf16 rounds the difference away on this
    problem), which docs/features/checkpoints.md does not allow: a bug to fix, not a tolerance."""
    compiled = save == load and save in COMPILING_BACKENDS
    return compiled and getattr(case.optimizer, "ONE_PASS", False) and dtype == torch.float32


@pytest.mark.parametrize(("case", "dtype", "save_backend", "load_backend"), _resumes(), ids=str)
def test_resume_is_identical(
    case: Case, dtype: torch.dtype, save_backend: str, load_backend: str, request: pytest.FixtureRequest
) -> None:
    if _known_compiled_one_pass_deviation(case, dtype, save_backend, load_backend):
        reason = "compiled ONE_PASS resume is not bit for bit (see _known_compiled_one_pass_deviation)"
        request.applymarker(pytest.mark.xfail(raises=AssertionError, strict=True, reason=reason))
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
