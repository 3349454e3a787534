"""Adan against the official golden runs, and the details ALGORITHMS.md marks as easy to miss."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from tests.problems import backward_random_batch, tiny_mlp
from tests.reference import golden

# v2022_* runs are the first public version; same maths, 6e-8 from HEAD (kept out: not the contract).
RUNS = golden.runs("adan", lambda run, spec: run.startswith("v2022"))


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("run", RUNS)
def test_golden_runs(run: str, backend: str) -> None:
    overrides = {} if "foreach" in golden.load("adan")["runs"][run]["kwargs"] else {"backend": backend}
    ours, gold, optimizer = golden.replay("adan", run, fastoptim.Adan, **overrides)
    # The golden files were made on another CPU; official ports drift from them by ~6e-8 here.
    assert golden.max_diff(ours, gold) < 2e-7
    expected_groups = golden.load("adan")["runs"][run]["state_dict"]["param_groups"]
    assert [g["step"] for g in optimizer.state_dict()["param_groups"]] == [g["step"] for g in expected_groups]


def test_group_step_counts_calls_even_without_gradients() -> None:
    model = tiny_mlp(inputs=4)
    optimizer = fastoptim.Adan([{"params": model[0].parameters()}, {"params": model[2].parameters()}])
    backward_random_batch(model, 1, inputs=4)
    for p in model[2].parameters():
        p.grad = None
    optimizer.step()
    optimizer.step()
    assert [g["step"] for g in optimizer.param_groups] == [2, 2]
    assert [g["step"] for g in optimizer.state_dict()["param_groups"]] == [2, 2]
    assert all(p not in optimizer.state for p in model[2].parameters())


def test_gradient_difference_is_zero_at_first_step() -> None:
    model = tiny_mlp(inputs=4)
    optimizer = fastoptim.Adan(model.parameters(), lr=1e-2)
    backward_random_batch(model, 1, inputs=4)
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for p, g in zip(model.parameters(), grads, strict=True):
        state = optimizer.state[p]
        assert torch.equal(state["exp_avg_diff"], torch.zeros_like(p))
        assert torch.equal(state["neg_pre_grad"], -g)
        assert torch.equal(p.grad, g), "the gradient is not modified"


def test_global_clip_covers_all_groups_and_leaves_grads_alone() -> None:
    """Clipping by the norm of all groups' gradients equals pre-scaling every gradient by
    min(max_norm / (norm + eps_of_last_group), 1) without clipping."""
    max_norm, eps = 0.05, 1e-6
    clipped, reference = tiny_mlp(inputs=4), tiny_mlp(inputs=4)
    groups = lambda m: [  # noqa: E731
        {"params": m[0].parameters(), "lr": 0.0},
        {"params": m[2].parameters(), "eps": eps},
    ]
    ours = fastoptim.Adan(groups(clipped), lr=1e-2, max_grad_norm=max_norm)
    manual = fastoptim.Adan(groups(reference), lr=1e-2)
    for seed in range(3):
        backward_random_batch(clipped, seed, inputs=4)
        backward_random_batch(reference, seed, inputs=4)
        raw = [p.grad.clone() for p in clipped.parameters()]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in raw))
        factor = min(max_norm / (norm.item() + eps), 1.0)
        assert factor < 1.0
        for p in reference.parameters():
            p.grad.mul_(factor)
        ours.step()
        manual.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(clipped.parameters(), raw, strict=True))
    for a, b in zip(clipped.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)
    assert torch.equal(clipped[0].weight, tiny_mlp(inputs=4)[0].weight), "lr = 0 group did not move"


def test_restart_opt() -> None:
    model = tiny_mlp(inputs=4)
    optimizer = fastoptim.Adan(model.parameters(), lr=1e-2)
    for seed in range(3):
        backward_random_batch(model, seed, inputs=4)
        optimizer.step()
    optimizer.restart_opt()
    assert optimizer.param_groups[0]["step"] == 0
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
            assert torch.equal(optimizer.state[p][key], torch.zeros_like(p))
        assert optimizer.state[p]["neg_pre_grad"].abs().sum() > 0
    backward_random_batch(model, 5, inputs=4)
    optimizer.step()
    assert optimizer.param_groups[0]["step"] == 1
    for p in model.parameters():
        assert torch.equal(optimizer.state[p]["exp_avg_diff"], torch.zeros_like(p))


def test_frozen_and_gradless_parameters_are_skipped() -> None:
    model = tiny_mlp(inputs=4)
    model[0].bias.requires_grad_(False)
    before = model[0].bias.detach().clone()
    optimizer = fastoptim.Adan(model.parameters(), lr=1e-2, weight_decay=0.1)
    backward_random_batch(model, 1, inputs=4)
    model[2].bias.grad = None
    untouched = model[2].bias.detach().clone()
    optimizer.step()
    assert torch.equal(model[0].bias, before) and torch.equal(model[2].bias, untouched)
    assert model[0].bias not in optimizer.state and model[2].bias not in optimizer.state


def test_bad_arguments() -> None:
    params = tiny_mlp(inputs=4).parameters()
    with pytest.raises(ValueError, match="max_grad_norm"):
        fastoptim.Adan(params, max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="gradient_release"):
        fastoptim.Adan(tiny_mlp(inputs=4).parameters(), max_grad_norm=1.0, gradient_release=True)
    with pytest.raises(ValueError, match=r"betas"):
        fastoptim.Adan(tiny_mlp(inputs=4).parameters(), betas=(0.9, 0.9))
    with pytest.raises(ValueError, match=r"betas\[2\]"):
        fastoptim.Adan(tiny_mlp(inputs=4).parameters(), betas=(0.9, 0.9, 1.0))
    with pytest.raises(ValueError, match="fused"):
        fastoptim.Adan(tiny_mlp(inputs=4).parameters(), fused=True)
