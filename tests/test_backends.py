"""Every runner equals the loop runner: exactly in float64, to rounding in float32 and bf16."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cases import CASES, Case
from tests.problems import make_batches, make_model, params_of, train, twin

DTYPES = {
    torch.float64: dict(atol=0, rtol=0),
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}


def _run(case: Case, dtype: torch.dtype, backend: str, steps: int = 12):
    model = make_model(dtype)
    optimizer = case.build(model.parameters(), backend=backend)
    train(model, optimizer, make_batches(steps, dtype))
    return model, optimizer


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_foreach_equals_loop(case: Case, dtype: torch.dtype) -> None:
    loop_model, loop_opt = _run(case, dtype, "loop")
    foreach_model, foreach_opt = _run(case, dtype, "foreach")
    tolerance = DTYPES[dtype]
    for a, b in zip(loop_model.parameters(), foreach_model.parameters(), strict=True):
        torch.testing.assert_close(b, a, **tolerance)
        for key, value in loop_opt.state[a].items():
            other = foreach_opt.state[b][key]
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(other, value, **tolerance)
            else:
                assert other == value


@pytest.mark.parametrize("case", CASES, ids=str)
def test_auto_backend_on_cpu_is_the_loop(case: Case) -> None:
    base = make_model()
    auto_model, loop_model = twin(base), twin(base)
    train(auto_model, case.build(auto_model.parameters()), make_batches(3))
    train(loop_model, case.build(loop_model.parameters(), backend="loop"), make_batches(3))
    for a, b in zip(params_of(auto_model), params_of(loop_model), strict=True):
        assert torch.equal(a, b)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=4),
    case_index=st.integers(0, len(CASES) - 1),
    lr=st.floats(1e-4, 1e-1),
    steps=st.integers(1, 4),
)
def test_foreach_equals_loop_float64_property(shapes, case_index, lr, steps) -> None:
    case = CASES[case_index]
    generator = torch.Generator().manual_seed(len(shapes) * 7 + steps)
    init = [torch.randn(tuple(shape), generator=generator, dtype=torch.float64) for shape in shapes]
    grads = [
        [torch.randn(tuple(shape), generator=generator, dtype=torch.float64) for shape in shapes]
        for _ in range(steps)
    ]
    results = []
    for backend in ("loop", "foreach"):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        optimizer = case.build(params, backend=backend, lr=lr)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
