"""Low precision: Kahan summation and decoupled decay on bf16/fp16 parameters."""

from __future__ import annotations

import pytest
import torch

import fastoptim
from tests.cases import LOW_PRECISION_CASES, Case
from tests.problems import make_batches, make_model, max_abs_diff, params_of, train, twin

LOW = [torch.bfloat16, torch.float16]


def _error_vs_fp32(case: Case, dtype: torch.dtype, kahan_sum: bool | None, steps: int = 80) -> float:
    base = make_model()
    exact = twin(base)
    train(exact, case.build(exact.parameters()), make_batches(steps))
    low = twin(base).to(dtype)
    train(low, case.build(low.parameters(), kahan_sum=kahan_sum), make_batches(steps, dtype))
    return max_abs_diff(params_of(low), params_of(exact))


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_bf16_kahan_tracks_fp32_much_closer_than_plain(case: Case) -> None:
    with_kahan = _error_vs_fp32(case, torch.bfloat16, kahan_sum=None)
    without = _error_vs_fp32(case, torch.bfloat16, kahan_sum=False)
    assert with_kahan * 5 < without, (with_kahan, without)


@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=str)
def test_fp16_kahan_is_no_worse_than_plain(case: Case) -> None:
    """fp16 keeps 3 more mantissa bits than bf16, so the parameter write loses less; for Adam-like
    optimizers the error is then dominated by the fp16 states (g^2 underflows below 6e-8, AdamP's
    eps of 1e-8 cannot hold it off), which Kahan does not touch."""
    with_kahan = _error_vs_fp32(case, torch.float16, kahan_sum=None)
    without = _error_vs_fp32(case, torch.float16, kahan_sum=False)
    assert with_kahan < 1.5 * without + 1e-3, (with_kahan, without)


def test_kahan_state_only_for_low_precision() -> None:
    fp32 = torch.nn.Parameter(torch.randn(4))
    bf16 = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    optimizer = fastoptim.Adam([fp32, bf16], lr=1e-3)
    fp32.grad, bf16.grad = torch.ones_like(fp32), torch.ones_like(bf16)
    optimizer.step()
    assert "kahan_comp" not in optimizer.state[fp32]
    assert optimizer.state[bf16]["kahan_comp"].dtype == torch.bfloat16
    off = fastoptim.Adam([torch.nn.Parameter(bf16.detach().clone())], lr=1e-3, kahan_sum=False)
    p = off.param_groups[0]["params"][0]
    p.grad = torch.ones_like(p)
    off.step()
    assert "kahan_comp" not in off.state[p]


@pytest.mark.parametrize("backend", ["loop", "foreach"])
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_small_decoupled_decay_is_not_lost(backend: str, dtype: torch.dtype) -> None:
    """AdamW lr 1e-3, wd 1e-2 on weights with zero gradient: 1000 steps decay them by
    (1 - 1e-5)^1000 = 0.990; a plain bf16 multiply by (1 - 1e-5) rounds back to the weight."""
    init = torch.linspace(0.5, 2.0, 64)
    param = torch.nn.Parameter(init.to(dtype))
    optimizer = fastoptim.AdamW([param], lr=1e-3, weight_decay=1e-2, backend=backend)
    for _ in range(1000):
        param.grad = torch.zeros_like(param)
        optimizer.step()
    expected = init * (1 - 1e-5) ** 1000
    torch.testing.assert_close(param.float(), expected, atol=0, rtol=8e-3)
    assert (param.float() < init.to(dtype).float()).all()

    plain = torch.nn.Parameter(init.to(dtype))
    no_kahan = fastoptim.AdamW([plain], lr=1e-3, weight_decay=1e-2, kahan_sum=False, backend=backend)
    for _ in range(1000):
        plain.grad = torch.zeros_like(plain)
        no_kahan.step()
    assert torch.equal(plain, init.to(dtype)), "without Kahan the decay is lost, as documented"


def test_low_precision_states_keep_param_dtype() -> None:
    param = torch.nn.Parameter(torch.randn(8, dtype=torch.bfloat16))
    optimizer = fastoptim.Adam([param], lr=1e-3)
    param.grad = torch.randn_like(param)
    optimizer.step()
    for key in ("exp_avg", "exp_avg_sq", "kahan_comp"):
        assert optimizer.state[param][key].dtype == torch.bfloat16
