"""Gradient release: the step inside backward equals the ordinary step."""

from __future__ import annotations

import functools

import pytest
import torch

import fastoptim
from tests.cases import BACKENDS, CASES, CASES_BY_NAME, Case
from tests.problems import loss_fn, make_batches, make_model, params_of, train, twin

STEPS = 8


def _train_released(model, optimizer, batches, scheduler=None) -> None:
    for batch in batches:
        loss_fn(model, batch).backward()
        optimizer.step()  # no-op for released parameters; keeps schedulers in sync
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()


@functools.cache
def _plain_loop_params(case_name: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """The ordinary loop step's parameters, computed once for every backend's released run."""
    case = CASES_BY_NAME[case_name]
    plain = make_model(dtype)
    train(plain, case.build(plain.parameters(), backend="loop"), make_batches(STEPS, dtype))
    return params_of(plain)


# Every case on every backend: the released steps run the loop runner whatever the optimizer's
# backend (docs/features/gradient_release.md), so a compiling backend compiles nothing here.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradient_release_equals_step(case: Case, dtype: torch.dtype, backend: str) -> None:
    released = make_model(dtype)
    if not case.gradient_release:
        with pytest.raises(ValueError, match="gradient_release"):
            case.build(released.parameters(), gradient_release=True, backend=backend)
        return
    optimizer = case.build(released.parameters(), gradient_release=True, backend=backend)
    fastoptim.prepare_for_gradient_release(released, optimizer)
    _train_released(released, optimizer, make_batches(STEPS, dtype))
    for a, b in zip(_plain_loop_params(case.name, dtype), params_of(released), strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in released.parameters())


def _schedule(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 4))


def test_gradient_release_with_scheduler_and_checkpoint() -> None:
    """Schedulers drive released steps; load_state_dict works while hooks are installed and the
    checkpoint holds optimizer state only."""
    base = make_model()
    batches = make_batches(2 * STEPS)
    plain = twin(base)
    plain_opt = fastoptim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    train(plain, plain_opt, batches, scheduler=_schedule(plain_opt))

    released = twin(base)
    optimizer = fastoptim.AdamW(released.parameters(), lr=1e-2, weight_decay=0.1, gradient_release=True)
    scheduler = _schedule(optimizer)
    fastoptim.prepare_for_gradient_release(released, optimizer)
    _train_released(released, optimizer, batches[:STEPS], scheduler)
    checkpoint = {"opt": optimizer.state_dict(), "sched": scheduler.state_dict()}
    for state in checkpoint["opt"]["state"].values():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}

    fresh = fastoptim.AdamW(released.parameters(), lr=1e-2, weight_decay=0.1, gradient_release=True)
    fresh_scheduler = _schedule(fresh)
    fresh.load_state_dict(checkpoint["opt"])
    fresh_scheduler.load_state_dict(checkpoint["sched"])
    fastoptim.remove_gradient_release(released)
    fastoptim.prepare_for_gradient_release(released, fresh)
    _train_released(released, fresh, batches[STEPS:], fresh_scheduler)
    for a, b in zip(params_of(plain), params_of(released), strict=True):
        assert torch.equal(a, b)


def test_load_state_dict_while_hooks_installed() -> None:
    base = make_model()
    batches = make_batches(6)
    plain = twin(base)
    plain_opt = fastoptim.Adam(plain.parameters(), lr=1e-2)
    train(plain, plain_opt, batches)

    released = twin(base)
    optimizer = fastoptim.Adam(released.parameters(), lr=1e-2, gradient_release=True)
    fastoptim.prepare_for_gradient_release(released, optimizer)
    _train_released(released, optimizer, batches[:3])
    optimizer.load_state_dict(optimizer.state_dict())  # replaces param_groups under the hooks
    _train_released(released, optimizer, batches[3:])
    for a, b in zip(params_of(plain), params_of(released), strict=True):
        assert torch.equal(a, b)


def test_add_param_group_while_hooks_installed() -> None:
    base = make_model()
    batches = make_batches(6)
    first, last = "0.weight", "3.weight"

    def groups(model):
        named = dict(model.named_parameters())
        rest = [p for n, p in named.items() if n != last]
        return rest, named[last]

    plain = twin(base)
    rest, tail = groups(plain)
    plain_opt = fastoptim.SGD(rest, lr=0.1, momentum=0.9)
    plain_opt.add_param_group({"params": [tail], "lr": 0.05})
    train(plain, plain_opt, batches)

    released = twin(base)
    rest, tail = groups(released)
    optimizer = fastoptim.SGD(rest, lr=0.1, momentum=0.9, gradient_release=True)
    fastoptim.prepare_for_gradient_release(released, optimizer)
    optimizer.add_param_group({"params": [tail], "lr": 0.05})
    _train_released(released, optimizer, batches)
    assert first in dict(released.named_parameters())
    for a, b in zip(params_of(plain), params_of(released), strict=True):
        assert torch.equal(a, b)


def test_parameters_outside_the_optimizer_keep_their_gradient() -> None:
    model = make_model()
    weight = model[0].weight
    optimizer = fastoptim.Adam([weight], lr=1e-2, gradient_release=True)
    fastoptim.prepare_for_gradient_release(model, optimizer)
    loss_fn(model, make_batches(1)[0]).backward()
    assert weight.grad is None
    assert model[3].weight.grad is not None


def test_gradient_release_errors() -> None:
    model = make_model()
    with pytest.raises(ValueError, match="gradient_release=True"):
        fastoptim.prepare_for_gradient_release(model, fastoptim.Adam(model.parameters(), lr=1e-3))
    with pytest.raises(TypeError, match="fastoptim optimizer"):
        fastoptim.prepare_for_gradient_release(model, torch.optim.Adam(model.parameters()))
    optimizer = fastoptim.Adam(model.parameters(), lr=1e-3, gradient_release=True)
    fastoptim.prepare_for_gradient_release(model, optimizer)
    with pytest.raises(ValueError, match="already has"):
        fastoptim.prepare_for_gradient_release(model, optimizer)
    fastoptim.remove_gradient_release(model)
    with pytest.raises(ValueError, match="no gradient-release hooks"):
        fastoptim.remove_gradient_release(model)
