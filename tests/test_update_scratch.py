"""AdamP's compiled step stores its update in a scratch buffer that its second pass reads back.

``cpu_codegen.update_scratch`` steps each mid-sized weight in a call of its own, with a
view of one buffer as an extra state. Checked against the loop runner (the official arithmetic) in
float64, float32 and bf16 with Kahan summation, with projections by channel and by layer firing;
on the generated kernel (the second pass reads the update and the parameter, not the moments);
and on how a bucket is cut into calls.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

import fastoptim
from fastoptim.projection import project
from fastoptim.runners.compiled.chunks import _cut
from fastoptim.runners.compiled.cpu_codegen import direct as compiled_direct
from fastoptim.runners.compiled.cpu_codegen import streaming_stores, update_scratch
from fastoptim.runners.compiled.inputs import CHUNK_SIZE
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen

#: Three weights of MIN_ELEMENTS or more (a row of 257: a vector tail), seventeen biases.
WEIGHT = (256, 257)
SHAPES = [WEIGHT] * 3 + [(7,)] * 17
WD_RATIO = 0.1


def _grad(param: Tensor, index: int, generator: torch.Generator) -> Tensor:
    """Random, orthogonal to each channel of ``param`` (index 1) or to all of it (index 2)."""
    grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
    p = param.detach()
    if index == 1:
        grad -= p * ((grad * p).sum(1, keepdim=True) / (p * p).sum(1, keepdim=True))
    elif index == 2:
        grad -= p * ((grad * p).sum() / (p * p).sum())
    return grad


def _steps(backend: str, dtype: torch.dtype, shapes: list[tuple[int, ...]], steps: int = 4):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in shapes]
    optimizer = fastoptim.AdamP(params, lr=1e-2, weight_decay=1e-2, wd_ratio=WD_RATIO, backend=backend)
    grad_generator = torch.Generator().manual_seed(1)
    with torch._inductor.config.patch(fx_graph_cache=False):
        for _ in range(steps):
            for index, param in enumerate(params):
                param.grad = _grad(param, index, grad_generator)  # new tensors: kept chunks refill them
            optimizer.step()
    return params, optimizer


def test_the_test_gradients_fire_the_projection_by_channel_and_by_layer() -> None:
    """Otherwise the scratch would not be checked on the projected updates."""
    generator = torch.Generator().manual_seed(0)
    param = torch.randn(WEIGHT, generator=generator, dtype=torch.float64)
    ratios = []
    for index in range(3):
        grad = _grad(param, index, generator)
        update = torch.randn(WEIGHT, generator=generator, dtype=torch.float64)
        ratios.append(project(param, grad, update, 0.1, WD_RATIO, 1e-8)[1])
    assert ratios == [1.0, WD_RATIO, WD_RATIO]


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_weights_stepped_with_the_scratch_match_the_loop_runner(dtype: torch.dtype, tolerance: float) -> None:
    compiled_direct.clear()
    compiled, optimizer = _steps("compiled", dtype, SHAPES)
    loop, _ = _steps("loop", dtype, SHAPES)
    assert update_scratch.buffer_elements(optimizer) == WEIGHT[0] * WEIGHT[1]
    for a, b in zip(compiled, loop, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance)


def test_bf16_weights_with_kahan_and_the_scratch_match_the_loop_runner() -> None:
    """The moments as stored (rounded to bf16) make the update; the scratch holds it in float32."""
    compiled, optimizer = _steps("compiled", torch.bfloat16, SHAPES[:3])
    loop, _ = _steps("loop", torch.bfloat16, SHAPES[:3])
    (buffer,) = update_scratch._BUFFERS[optimizer].values()
    assert buffer.dtype == torch.float32
    for a, b in zip(compiled, loop, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=4 * 2**-8)


def _loads(loop_body: str) -> set[str]:
    return set(re.findall(r"loadu\(((?:in_out_ptr|in_ptr|out_ptr)\d+)", loop_body))


@pytest.mark.skipif(not streaming_stores._CAN_PATCH, reason="this torch lacks KernelGroup.codegen_group")
def test_the_second_pass_reads_the_update_and_the_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the moments again: two tensors, one of them stored by an earlier loop (the update).

    (torch 2.13 makes the first pass one loop; torch 2.11 splits it into a pointwise loop and
    the per-channel sums.)
    """
    sources, rewrite = [], streaming_stores.with_streamed_stores

    def recorded(code: str) -> str:
        sources.append(rewrite(code))
        return sources[-1]

    monkeypatch.setattr(streaming_stores, "with_streamed_stores", recorded)
    compiled_direct.clear()
    _steps("compiled", torch.float32, SHAPES[:1], steps=1)
    (source,) = [s for s in sources if "loadu(" in s]
    *earlier, last = source.split("#pragma omp for")
    stored = set(re.findall(r"\.store\(((?:in_out_ptr|in_ptr|out_ptr)\d+)", "".join(earlier)))
    second = _loads(last)
    assert len(second) == 2 and len(second & stored) == 1, (second, stored)


def test_rows_with_the_scratch_are_a_call_each_and_the_rest_are_chunked() -> None:
    rows = [(torch.zeros(2), torch.zeros(2), (), None) for _ in range(CHUNK_SIZE + 3)]
    layouts = [(torch.float32, torch.float32, (), None, 1)] * len(rows)
    alone = [i in (1, 5) for i in range(len(rows))]
    cut = _cut(rows, layouts, alone)
    assert [(real, indices) for _, _, real, indices in cut] == [
        (1, [1]),
        (1, [5]),
        (CHUNK_SIZE, [i for i in range(CHUNK_SIZE + 2) if i not in (1, 5)]),
        (1, [CHUNK_SIZE + 2]),
    ]
    assert all(len(chunk) == CHUNK_SIZE for chunk, _, real, _ in cut if real > 1)
    few = _cut(rows[:4], layouts[:4], alone[:4])
    assert [indices for *_, indices in few] == [[1], [0], [2], [3]]
