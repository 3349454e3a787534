"""Optimizer accumulation (optimi's semantics): steps update states, not parameters."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from tests.cases import BACKENDS, CASES, Case, backend_variants
from tests.problems import loss_fn, make_batches, make_model, params_of, twin


@pytest.mark.parametrize(("case", "backend"), backend_variants(CASES), ids=str)
def test_accumulation_steps_update_states_only(case: Case, backend: str) -> None:
    model = make_model()
    optimizer = case.build(model.parameters(), backend=backend)
    before = params_of(model)
    optimizer.optimizer_accumulation = True
    for batch in make_batches(3):
        optimizer.zero_grad()
        loss_fn(model, batch).backward()
        optimizer.step()
    for a, b in zip(before, params_of(model), strict=True):
        assert torch.equal(a, b)
    group = optimizer.param_groups[0]
    for p in model.parameters():
        state = optimizer.state[p]
        assert state["step"] == 3
        advanced = [
            key
            for key in optimizer.state_keys(group)
            if not torch.equal(state[key], optimizer.init_state(group, p, key))
        ]
        assert advanced or not optimizer.state_keys(group), "the states took the gradients in"


def _manual_adam_with_accumulation(init, grads, accumulate, lr, betas, eps):
    """Reference written from optimi's definition: every micro-step updates the moments and the
    step count; only non-accumulating steps move the parameter."""
    param = init.clone()
    m = torch.zeros_like(param)
    v = torch.zeros_like(param)
    for t, (grad, acc) in enumerate(zip(grads, accumulate, strict=True), start=1):
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad * grad
        if not acc:
            m_hat = m / (1 - betas[0] ** t)
            v_hat = v / (1 - betas[1] ** t)
            param = param - lr * m_hat / (v_hat.sqrt() + eps)
    return param


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gradient_release", [False, True])
def test_accumulation_matches_definition(gradient_release: bool, backend: str) -> None:
    torch.manual_seed(3)
    init = torch.randn(5, 4, dtype=torch.float64)
    grads = [torch.randn(5, 4, dtype=torch.float64) for _ in range(8)]
    accumulate = [True, True, True, False] * 2
    model = torch.nn.Linear(4, 5, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(init)
    optimizer = fastoptim.Adam(
        model.parameters(), lr=1e-2, gradient_release=gradient_release, backend=backend
    )
    if gradient_release:
        fastoptim.prepare_for_gradient_release(model, optimizer)
    x = torch.eye(4, dtype=torch.float64)
    for grad, acc in zip(grads, accumulate, strict=True):
        optimizer.optimizer_accumulation = acc
        # loss whose gradient with respect to the weight is exactly `grad`
        (model(x).T * grad).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    expected = _manual_adam_with_accumulation(init, grads, accumulate, 1e-2, (0.9, 0.99), 1e-6)
    torch.testing.assert_close(model.weight.detach(), expected, atol=1e-12, rtol=1e-10)


def test_accumulation_skips_weight_decay() -> None:
    model = make_model()
    reference = twin(model)
    optimizer = fastoptim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    optimizer.optimizer_accumulation = True
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for a, b in zip(params_of(model), params_of(reference), strict=True):
        assert torch.equal(a, b)
