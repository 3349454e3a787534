"""Prodigy against prodigyopt 1.1.2 and its golden runs, the global estimate and the fixed bug."""

from __future__ import annotations

import prodigyopt
import pytest
import torch

import fastoptim
from tests.problems import backward_random_batch, tiny_mlp

GROUP_KEYS = ("d", "d_max", "d_numerator", "d_denom", "d_hat", "k")


def test_lr_zero_group_stays_frozen_with_beta1_zero() -> None:
    """Official bug: with betas[0] == 0 an lr = 0 group's v is never accumulated, yet the update
    divides its raw gradient by d*eps; fastoptim keeps the group frozen."""
    moved = {}
    for name, cls in (("official", prodigyopt.Prodigy), ("ours", fastoptim.Prodigy)):
        model = tiny_mlp()
        frozen = model[2].weight.detach().clone()
        optimizer = cls(
            [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}],
            betas=(0.0, 0.999),
        )
        for seed in range(3):
            backward_random_batch(model, seed)
            optimizer.step()
        moved[name] = (model[2].weight.detach() - frozen).abs().max().item()
    assert moved["official"] > 1.0, "the official code throws the frozen weights away"
    assert moved["ours"] == 0.0


def test_estimate_is_global_and_in_every_group() -> None:
    model = tiny_mlp()
    optimizer = fastoptim.Prodigy([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    for seed in range(4):
        backward_random_batch(model, seed)
        optimizer.step()
    first, second = optimizer.param_groups
    assert first["d"] > first["d0"] and first["k"] == 4
    for key in GROUP_KEYS:
        assert first[key] == second[key]
    saved = optimizer.state_dict()["param_groups"][1]
    assert saved["d"] == first["d"] and saved["d_numerator"] == first["d_numerator"]


def test_all_zero_gradients_do_not_update_or_divide_by_zero() -> None:
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = fastoptim.Prodigy(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert optimizer.param_groups[0]["k"] == 0 and optimizer.param_groups[0]["d"] == 1e-6
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_state_shapes_follow_slice_p_and_zero_parameters() -> None:
    model = tiny_mlp()
    torch.nn.init.zeros_(model[2].bias)
    optimizer = fastoptim.Prodigy(model.parameters(), slice_p=3)
    backward_random_batch(model, 0)
    optimizer.step()
    weight, bias = model[0].weight, model[2].bias
    assert optimizer.state[weight]["s"].shape == (weight.numel() // 3 + (weight.numel() % 3 > 0),)
    assert optimizer.state[bias]["p0"].ndim == 0, "an all-zero parameter keeps a 0-d p0, as officially"


def test_group_lr_rules_and_bad_arguments() -> None:
    model = tiny_mlp()
    optimizer = fastoptim.Prodigy(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.5}]
    )
    backward_random_batch(model, 0)
    with pytest.raises(RuntimeError, match="only supported for values of 0"):
        optimizer.step()
    for kwargs, name in (
        (dict(lr=0.0), "lr"),
        (dict(d0=0.0), "d0"),
        (dict(eps=0.0), "eps"),
        (dict(slice_p=0), "slice_p"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\]"),
        (dict(beta3=1.5), "beta3"),
        (dict(growth_rate=0.5), "growth_rate"),
    ):
        with pytest.raises(ValueError, match=name):
            fastoptim.Prodigy(tiny_mlp().parameters(), **kwargs)
    with pytest.raises(ValueError, match="gradient_release"):
        fastoptim.Prodigy(tiny_mlp().parameters(), gradient_release=True)


def test_one_host_sync_per_step() -> None:
    """The official code calls .item() twice per parameter; fastoptim reads the sums once."""
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(10)])
    optimizer = fastoptim.Prodigy(model.parameters())
    _backward_deep(model)
    calls = []
    original = torch.Tensor.item, torch.Tensor.tolist

    def counting(name, function):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return function(self, *args, **kwargs)

        return wrapper

    torch.Tensor.item, torch.Tensor.tolist = counting("item", original[0]), counting("tolist", original[1])
    try:
        optimizer.step()
    finally:
        torch.Tensor.item, torch.Tensor.tolist = original
    assert len(calls) == 1, calls


def _backward_deep(model: torch.nn.Module) -> None:
    model(torch.randn(8, 4)).pow(2).mean().backward()


def _odd_elements_gradient(param: torch.Tensor, seed: int) -> torch.Tensor:
    """A gradient that is zero at every even flat index (the elements ``slice_p=2`` reads)."""
    grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed), dtype=param.dtype)
    grad.view(-1)[::2] = 0.0
    return grad


@pytest.mark.parametrize("backend", ["loop", "foreach", "compiled"])
def test_a_skipped_step_advances_the_moments_as_officially(backend: str) -> None:
    """With ``slice_p=2`` and gradients only on the odd elements, ``s`` stays zero, so the
    official code skips the update, after its first loop has advanced the moments; fastoptim
    advances them in its update phase, which must then run without moving the parameters."""
    results = {}
    for name, cls, kwargs in (
        ("official", prodigyopt.Prodigy, {}),
        ("ours", fastoptim.Prodigy, {"backend": backend}),
    ):
        generator = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(6, 5, generator=generator)) for _ in range(2)]
        before = [p.detach().clone() for p in params]
        optimizer = cls(params, slice_p=2, **kwargs)
        for step in range(2):
            for i, p in enumerate(params):
                p.grad = _odd_elements_gradient(p, 10 * step + i)
            optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True)), name
        results[name] = [optimizer.state[p][key].clone() for p in params for key in ("exp_avg", "exp_avg_sq")]
        assert all(t.abs().sum() > 0 for t in results[name]), name
    for official, ours in zip(results["official"], results["ours"], strict=True):
        torch.testing.assert_close(ours, official, rtol=1e-4, atol=0.0)  # float32 rounding


@pytest.mark.parametrize("backend", ["loop", "foreach", "compiled"])
def test_accumulation_advances_the_moments_with_the_estimate_of_each_step(backend: str) -> None:
    """Optimizer accumulation: the parameters stay, the moments advance as the official first
    loop advances them, with the ``d`` each step starts from (a hand-written recurrence)."""
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(7, 3, dtype=torch.float64))
    optimizer = fastoptim.Prodigy([param], backend=backend, betas=(0.9, 0.99), d0=1e-4)
    direction = torch.randn_like(param)

    def gradient(seed: int) -> torch.Tensor:  # a steady direction, so that the estimate grows
        noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed), dtype=param.dtype)
        return direction + 0.1 * noise

    for seed in range(3):  # real steps first, so that x0 - p and with it the estimate move
        param.grad = gradient(seed)
        optimizer.step()
    state = optimizer.state[param]
    exp_avg, exp_avg_sq = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    before = param.detach().clone()
    optimizer.optimizer_accumulation = True
    estimates = []
    for seed in range(3, 7):
        param.grad = gradient(seed)
        d = optimizer.param_groups[0]["d"]
        estimates.append(d)
        exp_avg = 0.9 * exp_avg + d * 0.1 * param.grad
        exp_avg_sq = 0.99 * exp_avg_sq + d * d * 0.01 * param.grad * param.grad
        optimizer.step()
    assert torch.equal(param.detach(), before)
    assert len(set(estimates)) > 1, "the estimate moved, so each step's d counts"
    torch.testing.assert_close(state["exp_avg"], exp_avg, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(state["exp_avg_sq"], exp_avg_sq, rtol=1e-12, atol=0.0)
