"""A step's partial sums add up the same whether they come per tensor or stacked per compiled chunk.

The loop and foreach runners hand back a tuple of 0-d partial sums per tensor (or lists of them);
chunks compiled without dynamo one float64 tensor of all their rows' sums
(``direct.StackedPartials``). Checked against sums made here in
exact arithmetic (``math.fsum``), for each kind alone and mixed, and on a DAdaptSGD step whose
compiled chunks stack their sums.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastoptim
from fastoptim.reduction import StackedPartials
from fastoptim.reduction import sum_partials as _sum_partials
from tests.markers import needs_cpu_codegen


def _values(count: int, seed: int) -> list[list[float]]:
    """``count`` rows of three partial sums of mixed signs and magnitudes."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(count, 3, generator=generator, dtype=torch.float64)
    return (values * torch.logspace(-3, 3, count, dtype=torch.float64).view(-1, 1)).tolist()


def _exact(rows: list[list[float]]) -> list[float]:
    return [math.fsum(column) for column in zip(*rows, strict=True)]


def _loose(rows: list[list[float]]) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.tensor(value, dtype=torch.float64) for value in row) for row in rows]


def _stacked(rows: list[list[float]]) -> StackedPartials:
    return StackedPartials(torch.tensor(rows, dtype=torch.float64).flatten(), 3)


@pytest.mark.parametrize("kind", ["loose", "stacked", "mixed"])
def test_partial_sums_add_up_to_the_exact_sums(kind: str) -> None:
    rows = _values(40, seed=0)
    if kind == "loose":
        results = [None, *_loose(rows)]
    elif kind == "stacked":
        results = [_stacked(rows[:16]), None, _stacked(rows[16:])]
    else:
        results = [_stacked(rows[:16]), *_loose(rows[16:30]), _stacked(rows[30:])]
    sums = _sum_partials(results)
    assert sums is not None
    for got, want in zip(sums, _exact(rows), strict=True):
        assert got == pytest.approx(want, rel=1e-14, abs=1e-14)


def test_a_chunk_keeps_only_its_real_rows() -> None:
    rows = _values(16, seed=1)
    assert _sum_partials([_stacked(rows).first_rows(9)]) == pytest.approx(_exact(rows[:9]), rel=1e-14)


def test_rows_with_different_numbers_of_sums_are_refused() -> None:
    rows = _values(4, seed=2)
    two = StackedPartials(torch.tensor([row[:2] for row in rows], dtype=torch.float64).flatten(), 2)
    with pytest.raises(RuntimeError, match="different numbers of partial sums"):
        _sum_partials([two, *_loose(rows)])


@needs_cpu_codegen
def test_dadapt_sgd_stacks_its_compiled_sums_and_steps_as_the_loop_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """17 tensors: a full chunk of 16 and a single row, both compiled without dynamo."""
    seen: list[list[object]] = []
    original = fastoptim.reduction.sum_partials

    def recorded(results: list[object], sharding: object = None) -> list[float] | None:
        seen.append(results)
        return original(results, sharding)

    monkeypatch.setattr(fastoptim.reduction, "sum_partials", recorded)
    generator = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (7,)] * 8 + [(9,)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    grads = [[torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes] for _ in range(3)]
    results = {}
    for backend in ("compiled", "loop"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = fastoptim.DAdaptSGD(params, lr=1.0, momentum=0.5, backend=backend)
        for step_grads in grads:
            for param, grad in zip(params, step_grads, strict=True):
                param.grad = grad.clone()
            optimizer.step()
        results[backend] = ([p.detach() for p in params], optimizer.param_groups[0]["d"])
    compiled_steps = seen[1:3]  # the first step runs on the loop runner
    assert all(any(isinstance(r, StackedPartials) for r in step) for step in compiled_steps)
    (compiled, compiled_d), (loop, loop_d) = results["compiled"], results["loop"]
    assert compiled_d == pytest.approx(loop_d, rel=1e-12)
    for got, want in zip(compiled, loop, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
