"""DAdaptAdaGrad with sparse gradients (nn.Embedding(sparse=True)) against dadaptation 3.2.

The dense path is covered by the registry (tests/cases.py) and the golden runs
(tests/test_distance_golden.py).
"""

from __future__ import annotations

import copy
import warnings

import dadaptation
import pytest
import torch
from torch import nn

import fastoptim
from tests.problems import backward_random_batch, tiny_mlp

GROUP_KEYS = ("d", "k", "gsq_weighted", "sksq_weighted", "skl1")


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict({"embedding": nn.Embedding(40, 8, sparse=True), "head": nn.Linear(8, 3)}).to(dtype)


def _groups(model: nn.Module) -> list[dict]:
    return [
        {"params": list(model["embedding"].parameters())},
        {"params": list(model["head"].parameters()), "weight_decay": 0.01},
    ]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(40, 3, generator=generator)
    for _ in range(steps):
        tokens = torch.randint(0, 40, (16, 4), generator=generator)
        target = table[tokens].mean(1)
        features = model["embedding"](tokens).mean(1)
        loss = nn.functional.mse_loss(model["head"](features).float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("kwargs", [{"d0": 1e-3}, {"d0": 1e-3, "momentum": 0.9, "eps": 1e-4}], ids=str)
def test_sparse_and_dense_parameters_match_official_bitwise(backend: str, kwargs: dict) -> None:
    ours, theirs = _model(), _model()
    ours_optimizer = fastoptim.DAdaptAdaGrad(_groups(ours), backend=backend, **kwargs)
    official = dadaptation.DAdaptAdaGrad(_groups(theirs), **kwargs)
    _train(ours, ours_optimizer, 12)
    _train(theirs, official, 12)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ours_optimizer.param_groups[0]["d"] > 1e-3, "d should have grown"
    for mine, reference in zip(ours_optimizer.param_groups, official.param_groups, strict=True):
        for key in GROUP_KEYS:
            assert mine[key] == pytest.approx(reference[key], rel=1e-12), key
    embedding = ours["embedding"].weight
    official_state = official.state[theirs["embedding"].weight]
    for key in ("alphak", "sk", "x0", "weighted_sk"):
        assert torch.equal(ours_optimizer.state[embedding][key], official_state[key]), key


def test_rows_without_gradient_stay_put() -> None:
    model = _model()
    optimizer = fastoptim.DAdaptAdaGrad(model.parameters(), d0=1e-2)
    before = model["embedding"].weight.detach().clone()
    loss = model["head"](model["embedding"](torch.tensor([[1, 2]])).mean(1)).sum()
    loss.backward()
    optimizer.step()
    moved = (model["embedding"].weight != before).any(dim=1)
    assert moved[[1, 2]].all() and not moved[[0, *range(3, 40)]].any()


def test_sparse_state_resumes_exactly() -> None:
    model = _model()
    optimizer = fastoptim.DAdaptAdaGrad(_groups(model), d0=1e-3)
    _train(model, optimizer, 3)
    resumed_model = copy.deepcopy(model)
    resumed = fastoptim.DAdaptAdaGrad(_groups(resumed_model), d0=1e-3)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    _train(model, optimizer, 4)
    _train(resumed_model, resumed, 4)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kahan_sum", [True, False])
def test_bf16_sparse_tracks_float32(kahan_sum: bool) -> None:
    # Dual averaging recomputes the position from x0 and s at every step, so the error comes from
    # the bf16 states (kept in the parameter dtype, as officially), and Kahan summation of the
    # parameter write does not reduce it (it may add up to one more bf16 rounding).
    exact, low = _model(), _model(torch.bfloat16)
    _train(exact, fastoptim.DAdaptAdaGrad(_groups(exact), d0=1e-2), 30)
    _train(low, fastoptim.DAdaptAdaGrad(_groups(low), d0=1e-2, kahan_sum=kahan_sum), 30)
    pairs = zip(exact.parameters(), _model().parameters(), strict=True)
    moved = max((a - b).abs().max().item() for a, b in pairs)
    pairs = zip(low.parameters(), exact.parameters(), strict=True)
    error = max((a.float() - b).abs().max().item() for a, b in pairs)
    assert moved > 0.1
    assert error < 0.15 * moved


def test_other_optimizers_still_reject_sparse_gradients() -> None:
    model = _model()
    optimizer = fastoptim.DAdaptAdam(model.parameters())
    model["embedding"](torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match=r"DAdaptAdam does not support sparse gradients; .*DAdaptAdaGrad"):
        optimizer.step()
    assert not optimizer.state


@pytest.mark.parametrize("backend", ["loop", "foreach", "compiled"])
def test_sparse_steps_warn_nothing(backend: str) -> None:
    """fastoptim's own sparse tensors raise no torch warning (the sparse-invariant one, say)."""
    model = _model()
    optimizer = fastoptim.DAdaptAdaGrad(model.parameters(), backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            model["embedding"](torch.tensor([1, 3])).sum().backward()
            optimizer.step()
    ours = [w for w in caught if "fastoptim" in w.filename]
    assert not ours, [str(w.message) for w in ours]


@pytest.mark.parametrize("key", ["sk", "alphak"])
@pytest.mark.parametrize("backend", ["loop", "foreach", "compiled"])
def test_old_sums_are_summed_again_after_the_states_are_touched(backend: str, key: str) -> None:
    """A one-pass step takes its old sums of ``s`` from the last step's new ones; halving ``s`` (or
    doubling ``alpha``) in place between steps must make the next step sum them again, as the
    official code always does (its Q and L running totals, and so d, would differ otherwise)."""
    models, optimizers = [], []
    for build in (
        lambda params: dadaptation.DAdaptAdaGrad(params, d0=1e-3),
        lambda params: fastoptim.DAdaptAdaGrad(params, d0=1e-3, backend=backend),
    ):
        model = tiny_mlp()
        optimizer = build(model.parameters())
        for seed in range(3):
            backward_random_batch(model, seed)
            optimizer.step()
        optimizer.state[model[0].weight][key].mul_(0.5 if key == "sk" else 2.0)
        for seed in range(3, 6):
            backward_random_batch(model, seed)
            optimizer.step()
        models.append(model)
        optimizers.append(optimizer)
    for key in GROUP_KEYS:
        assert optimizers[1].param_groups[0][key] == pytest.approx(
            optimizers[0].param_groups[0][key], rel=1e-5
        ), key
    for official, ours in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-7)
