"""Inductor's cascade sums with the running sum in a register give the same bits as inductor's own.

``cpu_codegen.register_cascade`` swaps the helper of inductor's float32 cascade sums for
one that keeps the running sum out of the heap. The sums are long enough that each thread carries
partial sums several levels up the stack (3,000,001 elements: over 22 chunks of 4,096 vectors a
thread on 2 threads, a masked tail of one element), so a wrong carry changes the result's bits.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

from fastoptim.runners.compiled.cpu_codegen.register_cascade import sums_in_registers, with_register_sums
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen


def _sums(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return x.sum(), (x * y).sum()


def _compiled(patch: contextlib.AbstractContextManager, x: Tensor, y: Tensor) -> tuple[str, list[Tensor]]:
    torch._dynamo.reset()
    with patch, torch._inductor.config.patch(fx_graph_cache=False):
        results, codes = run_and_get_code(torch.compile(_sums, dynamic=True), x, y)
    return "\n".join(codes), list(results)


def test_the_register_helper_adds_the_same_values_in_the_same_order_as_inductors() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3_000_001, generator=generator) * torch.logspace(-3, 3, 3_000_001)
    y = torch.randn(3_000_001, generator=generator)
    torch_code, torch_sums = _compiled(contextlib.nullcontext(), x, y)
    code, sums = _compiled(sums_in_registers(), x, y)
    assert "cascade_sum_combine(" in torch_code and "fastoptim::cascade_add(" not in torch_code
    assert "fastoptim::cascade_add(" in code and "fastoptim::cascade_total(" in code
    assert [s.item() for s in sums] == [s.item() for s in torch_sums]
    exact = [x.double().sum(), (x.double() * y.double()).sum()]
    for got, want in zip(sums, exact, strict=True):
        assert abs(got.item() - want.item()) <= 1e-5 * x.double().abs().sum().item()


def test_kernels_without_a_cascade_sum_are_left_as_they_are() -> None:
    code = '#include <torch/csrc/inductor/cpp_prefix.h>\nextern "C" void kernel() {}\n'
    assert with_register_sums(code) == code


def test_a_helper_whose_accumulator_is_assigned_elsewhere_is_left_as_inductor_wrote_it() -> None:
    code = "\n".join(
        [
            "#include <torch/csrc/inductor/cpp_prefix.h>",
            "at::vec::Vectorized<float> acc = at::vec::Vectorized<float>(0);",
            "acc = cascade_sum_combine(x, &helper);",
            "acc = acc * two;",
            "acc = cascade_sum_final(&helper);",
        ]
    )
    assert with_register_sums(code) == code
    rewritten = with_register_sums(code.replace("acc = acc * two;", "y = acc * two;"))
    assert "acc = fastoptim::cascade_add(acc, x, &helper);" in rewritten
    assert "acc = fastoptim::cascade_total(acc, &helper);" in rewritten
