"""DAdaptSGD against dadaptation 3.2 and its golden runs, and the two crashes it fixes."""

from __future__ import annotations

import dadaptation
import pytest
import torch

import fastoptim
from tests.problems import backward_random_batch, tiny_mlp


def test_all_zero_first_gradient_skips_instead_of_dividing_by_zero() -> None:
    for cls in (dadaptation.DAdaptSGD, fastoptim.DAdaptSGD):
        model = tiny_mlp()
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
        backward_random_batch(model, 0)
        optimizer.step()
        assert optimizer.param_groups[0]["k"] == 1 and optimizer.param_groups[0]["g0_norm"] > 0


def test_schedule_reaching_zero_does_not_crash() -> None:
    for cls in (dadaptation.DAdaptSGD, fastoptim.DAdaptSGD):
        model = tiny_mlp()
        optimizer = cls(model.parameters(), d0=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / 2))
        for seed in range(2):
            backward_random_batch(model, seed)
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] == 0.0
        backward_random_batch(model, 5)
        if cls is dadaptation.DAdaptSGD:
            with pytest.raises(UnboundLocalError):
                optimizer.step()
            continue
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("backend", ["loop", "compiled"])
def test_saved_state_equals_the_official_one(backend: str) -> None:
    """A step does not write ``z`` (always ``x0 - s``); ``state_dict()`` fills it in."""
    states = []
    for cls, kwargs in ((dadaptation.DAdaptSGD, {}), (fastoptim.DAdaptSGD, {"backend": backend})):
        model = tiny_mlp()
        optimizer = cls(model.parameters(), momentum=0.9, **kwargs)
        for seed in range(4):
            backward_random_batch(model, seed)
            optimizer.step()
        states.append(optimizer.state_dict()["state"])
    official, ours = states
    tolerance = 1e-6 if backend == "compiled" else 0.0  # the loop is bit for bit the official code
    assert official.keys() == ours.keys()
    for index, state in official.items():
        for key in ("z", "s", "x0"):
            assert torch.allclose(ours[index][key], state[key], rtol=0, atol=tolerance)


def test_state_dict_with_an_entry_that_is_not_a_parameter_state() -> None:
    """torch's own hook tests keep other entries in ``optimizer.state``; state_dict() skips them."""
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = fastoptim.DAdaptSGD([param])
    for _ in range(2):
        param.grad = torch.randn(3)
        optimizer.step()
    optimizer.state["note"] = 1
    state = optimizer.state_dict()["state"][0]
    torch.testing.assert_close(state["z"], state["x0"] - state["s"])
