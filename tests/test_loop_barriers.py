"""Worksharing loops wait for each other only where one touches what another wrote.

``cpu_codegen.loop_barriers`` gives each kernel's loop ``nowait`` and puts an explicit
barrier before a kernel that depends on a loop since the last one. Checked on the OpenMP
directives inductor generates for small programs, and on their results against eager PyTorch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

from fastoptim.runners.compiled.cpu_codegen.fusion import inductor_patches
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen


def _directives_and_results(
    step: Callable[..., None], tensors: list[Tensor]
) -> tuple[list[str], list[Tensor]]:
    """The OpenMP directives of ``step`` compiled under the runner's patches (not ``simd`` ones,
    without the thread counts some torch versions write), and the tensors it updated in place."""
    compiled = [t.clone() for t in tensors]
    no_cache = torch._inductor.config.patch(fx_graph_cache=False)
    with inductor_patches(), no_cache:
        _, codes = run_and_get_code(torch.compile(step, dynamic=True), *compiled)
    lines = [re.sub(r" num_threads\(\d+\)", "", line.strip()) for code in codes for line in code.splitlines()]
    return [line for line in lines if line.startswith("#pragma omp") and " simd" not in line], compiled


def _reverse_then_update(a: Tensor, b: Tensor, c: Tensor) -> None:
    b.copy_(a.flip(0) * 2)  # reads a backwards
    a.mul_(3)  # overwrites a: every thread must have read it first
    c.copy_(b.flip(0) + 1)  # reads b backwards: every thread must have written it first


def test_a_loop_that_overwrites_or_reads_what_another_loop_touched_waits_for_it() -> None:
    tensors = [torch.randn(10_000), torch.zeros(10_000), torch.zeros(10_000)]
    directives, compiled = _directives_and_results(_reverse_then_update, tensors)
    assert directives == [
        "#pragma omp parallel",
        "#pragma omp for nowait",
        "#pragma omp barrier",
        "#pragma omp for nowait",
    ]
    _reverse_then_update(*tensors)
    assert all(torch.equal(want, got) for want, got in zip(tensors, compiled, strict=True))


def _two_updates(a: Tensor, b: Tensor) -> None:
    a.mul_(2)
    b.add_(1)


def test_loops_over_different_tensors_do_not_wait_for_each_other() -> None:
    tensors = [torch.randn(10_000), torch.randn(7_000)]
    directives, compiled = _directives_and_results(_two_updates, tensors)
    assert directives == ["#pragma omp parallel", "#pragma omp for nowait", "#pragma omp for nowait"]
    _two_updates(*tensors)
    assert all(torch.equal(want, got) for want, got in zip(tensors, compiled, strict=True))
