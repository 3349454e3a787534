"""A kernel's independent parallel reductions share one OpenMP region, with the same results.

``cpu_codegen.shared_region`` rewrites a run of inductor's parallel reductions (each in a
region of its own) into one region of ``nowait`` loops. Checked on the directives and the results
of small programs compiled with and without the rewrite (the sums are long enough to be split
between threads and carried in cascade, so a change in who adds what changes their bits), and on
sources where the rewrite must leave the code alone.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

from fastoptim.runners.compiled.cpu_codegen import shared_region
from fastoptim.runners.compiled.cpu_codegen.fusion import inductor_patches
from fastoptim.runners.compiled.cpu_codegen.shared_region import with_shared_regions
from fastoptim.runners.compiled.runner import INDUCTOR_OPTIONS
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen

_CAN_PATCH = shared_region._CAN_PATCH


def _sum_and_scale(a: Tensor, b: Tensor, c: Tensor) -> list[Tensor]:
    """Per tensor, a sum over it fused with an update of it: three reductions of one kernel."""
    sums = []
    for t in (a, b, c):
        sums.append((t * t).sum())
        t.mul_(0.5)
    return sums


def _compiled(
    tensors: list[Tensor], shared: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[Tensor]]:
    """OpenMP directives (not ``simd``) of ``_sum_and_scale`` compiled as the runner compiles,
    and its sums followed by the tensors it updated."""
    monkeypatch.setattr(shared_region, "_CAN_PATCH", shared and _CAN_PATCH)
    torch._dynamo.reset()
    compiled = [t.clone() for t in tensors]
    with inductor_patches(), torch._inductor.config.patch(fx_graph_cache=False):
        sums, codes = run_and_get_code(
            torch.compile(_sum_and_scale, dynamic=True, options=INDUCTOR_OPTIONS), *compiled
        )
    lines = [re.sub(r" num_threads\(\d+\)", "", line.strip()) for code in codes for line in code.splitlines()]
    directives = [line for line in lines if line.startswith("#pragma omp") and " simd" not in line]
    return directives, [*sums, *compiled]


@pytest.mark.skipif(not _CAN_PATCH, reason="this torch lacks KernelGroup.codegen_group")
def test_independent_reductions_share_one_region_and_give_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = (1_000_003, 300_001, 70_001)
    tensors = [torch.randn(n, generator=generator) * torch.logspace(-3, 3, n) for n in sizes]
    separate, want = _compiled(tensors, shared=False, monkeypatch=monkeypatch)
    shared, got = _compiled(tensors, shared=True, monkeypatch=monkeypatch)
    assert separate == ["#pragma omp parallel", "#pragma omp for"] * 3
    assert shared == ["#pragma omp parallel", *["#pragma omp for nowait"] * 3]
    for expected, actual in zip(want, got, strict=True):
        assert torch.equal(expected, actual)
    eager = [t.clone() for t in tensors]
    for expected, actual in zip(_sum_and_scale(*eager), got[:3], strict=True):
        assert torch.allclose(expected.double(), actual.double(), rtol=1e-5)
    assert all(torch.equal(e, g) for e, g in zip(eager, got[3:], strict=True))


def _reduction_block(reads: str, writes: str) -> list[str]:
    """A parallel reduction's block laid out as inductor writes it (shortened)."""
    return [
        "    {",
        "        {",
        "            float tmp_acc0 = 0;",
        "            int max_threads = omp_get_max_threads();",
        "            float tmp_acc0_arr[max_threads];",
        "            #pragma omp parallel",
        "            {",
        "                int tid = omp_get_thread_num();",
        "                float tmp_acc0_local = 0;",
        "                #pragma omp for",
        "                for(int64_t x0=0; x0<ks0; x0+=1)",
        "                {",
        f"                    tmp_acc0_local = tmp_acc0_local + {reads}[x0];",
        "                }",
        "                tmp_acc0_arr[tid] = tmp_acc0_local;",
        "            }",
        "            for (int tid = 0; tid < max_threads; tid++)",
        "            {",
        "                tmp_acc0 = tmp_acc0 + tmp_acc0_arr[tid];",
        "            }",
        f"            {writes}[0] = tmp_acc0;",
        "        }",
        "    }",
    ]


def _kernel(*blocks: list[str]) -> str:
    lines = ['extern "C"  void kernel(const float* in_ptr0, float* out_ptr0, float* out_ptr1)', "{"]
    for block in blocks:
        lines += block
    return "\n".join([*lines, "}"])


def test_the_rewrite_renames_each_reductions_accumulators_apart() -> None:
    code = with_shared_regions(
        _kernel(_reduction_block("in_ptr0", "out_ptr0"), _reduction_block("in_ptr1", "out_ptr1"))
    )
    assert code.count("#pragma omp parallel") == 1 and code.count("#pragma omp for nowait") == 2
    assert (
        "float tmp_acc0_arr_r0[max_threads_r0];" in code and "float tmp_acc0_arr_r1[max_threads_r1];" in code
    )
    assert "out_ptr0[0] = tmp_acc0_r0;" in code and "out_ptr1[0] = tmp_acc0_r1;" in code
    assert code.index("out_ptr0[0] = ") > code.index("tmp_acc0_arr_r1[tid] = tmp_acc0_local;")


def test_a_reduction_that_reads_what_an_earlier_one_writes_keeps_its_own_region() -> None:
    code = _kernel(_reduction_block("in_ptr0", "out_ptr0"), _reduction_block("out_ptr0", "out_ptr1"))
    assert with_shared_regions(code) == code


def test_a_reduction_after_a_barrier_or_of_another_shape_is_left_alone() -> None:
    barrier = _reduction_block("in_ptr1", "out_ptr1")
    code = _kernel(_reduction_block("in_ptr0", "out_ptr0"), ["    #pragma omp barrier", *barrier])
    assert with_shared_regions(code) == code
    scheduled = [line.replace("omp for", "omp for schedule(dynamic)") for line in barrier]
    code = _kernel(_reduction_block("in_ptr0", "out_ptr0"), scheduled)
    assert with_shared_regions(code) == code
