"""Reducing optimizers update in the same pass as their reduction only where the official code
cannot skip the update; around every way the skip can happen they equal dadaptation 3.2 bit for bit.

The official step returns before any parameter moves when the sum over the states ``s`` of the
parameters it reduces over is zero. fastoptim runs both phases in one pass only when the last
step's sum was nonzero over the same parameters and groups and nothing has touched their states
since; each test below makes the sum zero in one of the other ways and would fail if the update
rode along with the reduction there.
"""

from __future__ import annotations

import dadaptation
import pytest
import torch

import fastoptim
from fastoptim.runners import apply
from tests.problems import backward_random_batch, tiny_mlp

BACKENDS = ("loop", "foreach")


def _zero_gradients(model: torch.nn.Module, layers: tuple[int, ...]) -> None:
    model.zero_grad(set_to_none=True)
    for index in layers:
        for p in model[index].parameters():
            p.grad = torch.zeros_like(p)


def _run_both(build_official, build_ours, steps) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Runs ``steps`` (functions of model and optimizer) on twin models; returns both models."""
    models = []
    for build in (build_official, build_ours):
        model = tiny_mlp()
        optimizer = build(model)
        for step in steps:
            step(model, optimizer)
        models.append(model)
    return models[0], models[1]


def _assert_equal(official: torch.nn.Module, ours: torch.nn.Module) -> None:
    for a, b in zip(official.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)


def _train(seed: int):
    def step(model, optimizer):
        backward_random_batch(model, seed)
        optimizer.step()

    return step


def _only_layer(index: int, seed: int):
    """Gradients for one layer only; the other's are None, so it leaves the sums."""

    def step(model, optimizer):
        backward_random_batch(model, seed)
        for i, layer in enumerate(model):
            if i != index:
                for p in layer.parameters():
                    p.grad = None
        optimizer.step()

    return step


def _zeros_for_layers(*layers: int):
    def step(model, optimizer):
        _zero_gradients(model, layers)
        optimizer.step()

    return step


@pytest.mark.parametrize("backend", BACKENDS)
def test_dadapt_adam_a_new_layer_with_zero_gradients_skips_as_officially(backend: str) -> None:
    """Steps 1-3 reduce over layer 0 only; step 4 over layer 2 alone, whose s is still zero: the
    official code skips it, decoupled decay included."""
    kwargs = dict(lr=1.0, weight_decay=0.1, decouple=True, d0=1e-3)
    official, ours = _run_both(
        lambda m: dadaptation.DAdaptAdam(m.parameters(), **kwargs),
        lambda m: fastoptim.DAdaptAdam(m.parameters(), **kwargs, backend=backend),
        [_only_layer(0, 0), _only_layer(0, 1), _only_layer(0, 2), _zeros_for_layers(2), _train(3)],
    )
    _assert_equal(official, ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dadapt_adam_a_schedule_through_zero_skips_as_officially(backend: str) -> None:
    """With every lr at 0 nothing is reduced: the official code moves no parameter."""

    def set_lr(value):
        def step(model, optimizer):
            for group in optimizer.param_groups:
                group["lr"] = value

        return step

    kwargs = dict(weight_decay=0.1, decouple=True, d0=1e-3)
    steps = [_train(0), _train(1), set_lr(0.0), _train(2), set_lr(1.0), _train(3), _train(4)]
    official, ours = _run_both(
        lambda m: dadaptation.DAdaptAdam(m.parameters(), **kwargs),
        lambda m: fastoptim.DAdaptAdam(m.parameters(), **kwargs, backend=backend),
        steps,
    )
    _assert_equal(official, ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dadapt_adan_restart_then_zero_gradients_skips_as_officially(backend: str) -> None:
    """``restart_opt`` zeroes s in place: the next all-zero step reduces to zero and is skipped,
    where the proximal decay would otherwise shrink every parameter."""

    def restart(model, optimizer):
        optimizer.restart_opt()

    kwargs = dict(weight_decay=0.1, d0=1e-3)
    official, ours = _run_both(
        lambda m: dadaptation.DAdaptAdan(m.parameters(), **kwargs),
        lambda m: fastoptim.DAdaptAdan(m.parameters(), **kwargs, backend=backend),
        [_train(0), _train(1), restart, _zeros_for_layers(0, 2), _train(2)],
    )
    _assert_equal(official, ours)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["DAdaptAdam", "DAdaptAdan", "DAdaptSGD", "DAdaptAdaGrad"])
def test_steady_steps_run_in_one_pass_and_equal_the_official_code(
    name: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    one_pass = apply.apply_one_pass
    monkeypatch.setattr(
        fastoptim.reduction, "apply_one_pass", lambda *args: calls.append(1) or one_pass(*args)
    )
    official, ours = _run_both(
        lambda m: getattr(dadaptation, name)(m.parameters(), d0=1e-3),
        lambda m: getattr(fastoptim, name)(m.parameters(), d0=1e-3, backend=backend),
        [_train(seed) for seed in range(5)],
    )
    _assert_equal(official, ours)
    params = len(list(ours.parameters()))
    tensors_per_step = 1 if backend == "foreach" else params
    assert len(calls) == 4 * tensors_per_step, "steps 2-5 should each run in one pass"


def test_states_cancelling_to_zero_after_a_one_pass_update_warn() -> None:
    """A one-element DAdaptSGD whose second gradient undoes the first: s returns to exactly zero,
    which the official code answers by skipping the update fastoptim already made."""
    param = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = fastoptim.DAdaptSGD([param])
    param.grad = torch.tensor([1.0])
    optimizer.step()
    param.grad = torch.tensor([-1.0])
    with pytest.warns(RuntimeWarning, match="cancelled to exactly zero"):
        optimizer.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dadapt_adan_an_all_zero_first_step_does_not_count(backend: str) -> None:
    """The official step counter advances only with an update, so the step after a skipped one
    takes the gradient difference from itself again (0)."""

    official, ours = _run_both(
        lambda m: dadaptation.DAdaptAdan(m.parameters(), d0=1e-3),
        lambda m: fastoptim.DAdaptAdan(m.parameters(), d0=1e-3, backend=backend),
        [_zeros_for_layers(0, 2), _train(1), _train(2)],
    )
    _assert_equal(official, ours)


def _zero_states(key: str):
    def step(model, optimizer):
        for p in model.parameters():
            optimizer.state[p][key].zero_()

    return step


def _shift_origin(model, optimizer) -> None:
    for p in model.parameters():
        optimizer.state[p]["x0"].add_(0.01)


@pytest.mark.parametrize("backend", [*BACKENDS, "compiled"])
def test_dadapt_adagrad_sees_its_watched_states_zeroed_and_its_origin_moved(backend: str) -> None:
    """DAdaptAdaGrad watches only the states its skip and its kept sums depend on
    (``REDUCTION_STATE_KEYS``): ``sk`` zeroed in place must make the next step sum again, and
    ``x0`` moved in place (not watched) must move the one-pass update as it moves the official."""
    official, ours = _run_both(
        lambda m: dadaptation.DAdaptAdaGrad(m.parameters(), d0=1e-3),
        lambda m: fastoptim.DAdaptAdaGrad(m.parameters(), d0=1e-3, backend=backend),
        [
            _train(0),
            _train(1),
            _shift_origin,
            _train(2),
            _zero_states("sk"),
            _zeros_for_layers(0, 2),
            _train(3),
        ],
    )
    _assert_equal(official, ours)


@pytest.mark.parametrize("backend", [*BACKENDS, "compiled"])
def test_dadapt_sgd_sees_s_zeroed_and_its_origin_moved(backend: str) -> None:
    """DAdaptSGD watches ``s`` alone: ``x0`` moved in place moves the one-pass update as it moves
    the official one, and ``s`` zeroed before an all-zero gradient makes the step skip (the
    official code raises ZeroDivisionError there) instead of moving every parameter to ``x0``."""
    official, ours = _run_both(
        lambda m: dadaptation.DAdaptSGD(m.parameters(), d0=1e-3),
        lambda m: fastoptim.DAdaptSGD(m.parameters(), d0=1e-3, backend=backend),
        [_train(0), _train(1), _shift_origin, _train(2)],
    )
    _assert_equal(official, ours)
    optimizer = fastoptim.DAdaptSGD(ours.parameters(), d0=1e-3, backend=backend)
    for step in (_train(0), _train(1), _zero_states("s")):
        step(ours, optimizer)
    before = [p.detach().clone() for p in ours.parameters()]
    _zeros_for_layers(0, 2)(ours, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, ours.parameters(), strict=True))
