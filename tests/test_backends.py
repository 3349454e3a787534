"""Every runner equals the loop runner: exactly in float64, to rounding in float32 and bf16."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastoptim.runners
from tests.cases import BACKENDS, CASES, Case
from tests.problems import make_batches, make_model, train

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


def _spy_on_runners(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wraps every runner in the registry; returns the names of the runners called, in call order.

    The one place that knows how a step reaches a runner: through ``fastoptim.runners.RUNNERS``,
    which ``get_runner`` reads at each step. An entry is the run function itself or an object
    whose ``run`` attribute is (a frozen dataclass); adapt this helper if the registry moves.
    """
    calls: list[str] = []

    def recording(name: str, run):
        def spy(*args, **kwargs):
            calls.append(name)
            return run(*args, **kwargs)

        return spy

    for name in BACKENDS:
        runner = fastoptim.runners.get_runner(name, torch.device("cpu"))  # imported if it is lazily
        if callable(getattr(runner, "run", None)):
            spy = dataclasses.replace(runner, run=recording(name, runner.run))
        else:
            spy = recording(name, runner)
        monkeypatch.setitem(fastoptim.runners.RUNNERS, name, spy)
    return calls


def test_auto_backend_resolves_to_the_loop_on_cpu_and_foreach_elsewhere() -> None:
    assert fastoptim.runners.resolve_backend("auto", torch.device("cpu")) == "loop"
    assert fastoptim.runners.resolve_backend("auto", torch.device("cuda")) == "foreach"
    for backend in BACKENDS:
        assert fastoptim.runners.resolve_backend(backend, torch.device("cpu")) == backend


@pytest.mark.parametrize("case", CASES, ids=str)
def test_auto_backend_on_cpu_runs_the_loop_runner(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_on_runners(monkeypatch)
    model = make_model()
    optimizer = case.build(model.parameters())
    assert optimizer.backend == "auto"
    train(model, optimizer, make_batches(2))
    assert calls and set(calls) == {"loop"}, calls
    # the spies see another runner when one is chosen, so the assertion above can fail
    calls.clear()
    train(model, case.build(model.parameters(), backend="foreach"), make_batches(1))
    assert calls and set(calls) == {"foreach"}, calls


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
