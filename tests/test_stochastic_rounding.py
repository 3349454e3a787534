"""Stochastic rounding of bf16 parameters: unbiased, bufferless, reproducible, on every backend."""

from __future__ import annotations

import copy

import pytest
import torch

import fastoptim
from fastoptim.stochastic_rounding import round_to_bf16
from tests.cases import REPRESENTATIVE_CASES
from tests.problems import make_batches, make_model, train


@pytest.mark.parametrize("value", [1.0 + 2**-9, -3.0 - 5 * 2**-8, 1e-30 * 1.3])
def test_rounds_to_a_neighbour_without_bias(value: float) -> None:
    x = torch.full((100_000,), value, dtype=torch.float32)
    y = round_to_bf16(x, torch.tensor(7), torch.tensor(3))
    neighbours = y.unique()
    assert len(neighbours) == 2 and torch.equal(neighbours.to(torch.bfloat16).float(), neighbours)
    assert neighbours[0] < value < neighbours[1]
    spacing = (neighbours[1] - neighbours[0]).item()
    # mean of 100k Bernoulli draws: within 5 standard deviations of the value
    assert abs(y.double().mean().item() - value) < 5 * 0.5 * spacing / 100_000**0.5


def test_special_values_and_exact_ones_are_kept() -> None:
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -2.0, 1.5])
    y = round_to_bf16(x, torch.tensor(1), torch.tensor(0))
    assert torch.equal(y[:2], x[:2]) and y[2].isnan() and torch.equal(y[3:], x[3:])


def _run(backend: str, steps: int, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = make_model(torch.bfloat16)
    optimizer = fastoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, backend=backend, **options)
    train(model, optimizer, make_batches(steps, torch.bfloat16))
    return model


def _distance(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    got = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    want = torch.cat([p.detach().float().flatten() for p in reference.parameters()])
    return (got - want).norm().item()


def test_closer_to_float32_than_round_to_nearest_and_no_buffer() -> None:
    torch.manual_seed(0)
    reference = make_model(torch.float32)
    optimizer = fastoptim.AdamW(reference.parameters(), lr=1e-3, weight_decay=1e-2)
    train(reference, optimizer, make_batches(200, torch.float32))
    nearest = _distance(_run("loop", 200, kahan_sum=False), reference)
    stochastic = _distance(_run("loop", 200, stochastic_rounding=True), reference)
    assert stochastic < nearest / 3
    model = make_model(torch.bfloat16)
    sr = fastoptim.AdamW(model.parameters(), lr=1e-3, stochastic_rounding=True)
    train(model, sr, make_batches(1, torch.bfloat16))
    assert all("kahan_comp" not in state for state in sr.state.values())


def test_small_decoupled_decay_is_kept_on_average() -> None:
    """lr * wd = 1e-5 a step is far below bf16's resolution: round to nearest never decays a
    weight; stochastic rounding decays it as float32 does, on average."""
    weight = torch.full((50_000,), 1.0)
    results = {}
    for name, options in (("nearest", {"kahan_sum": False}), ("stochastic", {"stochastic_rounding": True})):
        param = torch.nn.Parameter(weight.to(torch.bfloat16))
        optimizer = fastoptim.AdamW([param], lr=1e-3, weight_decay=1e-2, **options)
        for _ in range(300):
            param.grad = torch.zeros_like(param)
            optimizer.step()
        results[name] = param.float().mean().item()
    expected = (1 - 1e-5) ** 300
    assert results["nearest"] == 1.0
    assert abs(results["stochastic"] - expected) < 0.1 * (1 - expected)


@pytest.mark.parametrize("backend", ["foreach", "compiled"])
def test_every_backend_draws_the_same_bits(backend: str) -> None:
    loop = _run("loop", 5, stochastic_rounding=True)
    other = _run(backend, 5, stochastic_rounding=True)
    for a, b in zip(loop.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reproducible_and_resumed_exactly() -> None:
    whole = _run("loop", 6, stochastic_rounding=True)
    again = _run("loop", 6, stochastic_rounding=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), again.parameters(), strict=True))
    torch.manual_seed(0)
    model = make_model(torch.bfloat16)
    batches = make_batches(6, torch.bfloat16)
    optimizer = fastoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, stochastic_rounding=True)
    train(model, optimizer, batches[:3])
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = fastoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, stochastic_rounding=True)
    torch.manual_seed(123)  # the resumed run's seeds come from the checkpoint, not from here
    resumed.load_state_dict(saved)
    train(model, resumed, batches[3:])
    for a, b in zip(model.parameters(), whole.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", REPRESENTATIVE_CASES, ids=str)
def test_every_optimizer_steps_with_it(case) -> None:
    model = make_model(torch.bfloat16)
    optimizer = case.build(model.parameters(), stochastic_rounding=True)
    losses = train(model, optimizer, make_batches(3, torch.bfloat16))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all("kahan_comp" not in state for state in optimizer.state.values())


def test_refused_with_kahan_and_on_fp16() -> None:
    bf16 = [torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="stochastic_rounding=True with kahan_sum=True"):
        fastoptim.Adam(bf16, lr=1e-3, stochastic_rounding=True, kahan_sum=True)
    with pytest.raises(ValueError, match="stochastic_rounding is for bf16 parameters"):
        fastoptim.Adam(
            [torch.nn.Parameter(torch.zeros(2, dtype=torch.float16))], lr=1e-3, stochastic_rounding=True
        )
    with pytest.raises(TypeError, match="stochastic_rounding"):
        fastoptim.Adam(bf16, lr=1e-3, stochastic_rounding="yes")


def test_the_state_creating_step_makes_no_kahan_buffer() -> None:
    """torch.distributed.checkpoint's state-creating step (lr 0, zero gradients) makes the state a
    step would: with stochastic rounding, no Kahan buffer."""
    params = [torch.nn.Parameter(torch.randn(4, 3).to(torch.bfloat16)) for _ in range(2)]
    optimizer = fastoptim.AdamW(params, lr=0.0, stochastic_rounding=True)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    assert all(state["step"] == 0 and "kahan_comp" not in state for state in optimizer.state.values())
    kahan = fastoptim.AdamW([torch.nn.Parameter(torch.randn(3).to(torch.bfloat16))], lr=0.0)
    kahan.param_groups[0]["params"][0].grad = torch.zeros(3, dtype=torch.bfloat16)
    kahan.step()
    assert all("kahan_comp" in state for state in kahan.state.values())
