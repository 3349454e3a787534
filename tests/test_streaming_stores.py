"""Stores to memory a kernel never reads are streamed (non-temporal), with the same values.

``cpu_codegen.streaming_stores`` rewrites a kernel's full-vector stores to a pointer
it never loads. Checked on a compiled write of a tensor the kernel does not read (float32 and
float64, aligned and at an odd offset) with and without the rewrite, on D-Adaptation SGD with
momentum 0 (which sets the parameter without reading it) against the loop runner, and on
sources where stores must stay as they are.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch._inductor.utils import run_and_get_code

import fastoptim
from fastoptim.runners.compiled.cpu_codegen import direct as compiled_direct
from fastoptim.runners.compiled.cpu_codegen import streaming_stores
from fastoptim.runners.compiled.cpu_codegen.fusion import inductor_patches
from fastoptim.runners.compiled.cpu_codegen.streaming_stores import MIN_STREAM_BYTES, with_streamed_stores
from fastoptim.runners.compiled.runner import INDUCTOR_OPTIONS
from tests.markers import needs_cpu_codegen

pytestmark = needs_cpu_codegen

_CAN_PATCH = streaming_stores._CAN_PATCH
_INCLUDE = "#include <torch/csrc/inductor/cpp_prefix.h>"
_X0 = "static_cast<int64_t>(x0)"
_FOR = (
    f"for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(ks0); x0+={_X0.replace('x0', '16L')})"
)
_STORE = f"tmp0.store(out_ptr0 + {_X0});"


def _set_difference(out: Tensor, x0: Tensor, s: Tensor, g: Tensor) -> None:
    """``s += 0.01 g`` and ``out = x0 - s``: ``out`` is written, never read (DAdaptSGD's update)."""
    s.add_(g, alpha=0.01)
    out.copy_(x0 - s)


def _compiled(
    tensors: list[Tensor], stream: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[Tensor]]:
    monkeypatch.setattr(streaming_stores, "_CAN_PATCH", stream and _CAN_PATCH)
    torch._dynamo.reset()
    tensors = [t.clone() for t in tensors]
    with inductor_patches(), torch._inductor.config.patch(fx_graph_cache=False):
        compiled = torch.compile(_set_difference, dynamic=True, options=INDUCTOR_OPTIONS)
        _, codes = run_and_get_code(compiled, *tensors)
    return "\n".join(codes), tensors


@pytest.mark.skipif(not _CAN_PATCH, reason="this torch lacks KernelGroup.codegen_group")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_a_tensor_written_without_being_read_is_streamed_with_the_same_values(
    dtype: torch.dtype, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over :data:`MIN_STREAM_BYTES`, aligned (offset 0) or not (the helper then stores plainly)."""
    size = MIN_STREAM_BYTES // dtype.itemsize + 37
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(size + offset, generator=generator, dtype=dtype)[offset:] for _ in range(4)]
    before, want = _compiled(tensors, stream=False, monkeypatch=monkeypatch)
    after, got = _compiled(tensors, stream=True, monkeypatch=monkeypatch)
    assert "stream_store(" not in before
    assert "fastoptim::stream_store(" in after and "fastoptim::stream_fence();" in after
    for expected, actual in zip(want, got, strict=True):
        assert torch.equal(expected, actual)
    eager = [t.clone() for t in tensors]
    _set_difference(*eager)
    torch.testing.assert_close(got[0], eager[0])


@pytest.mark.skipif(not _CAN_PATCH, reason="this torch lacks KernelGroup.codegen_group")
def test_dadapt_sgd_without_momentum_streams_its_parameters_and_steps_as_the_loop_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weights of 2^18 + 5 elements (over MIN_STREAM_BYTES): every compiled step against the loop runner."""
    sources = []

    def recorded(code: str) -> str:
        sources.append(with_streamed_stores(code))
        return sources[-1]

    monkeypatch.setattr(streaming_stores, "with_streamed_stores", recorded)
    compiled_direct.clear()
    generator = torch.Generator().manual_seed(1)
    shapes = [(512, 513), (513,), (520, 505), (7,)]
    start = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(4)]
    results = {}
    for backend in ("compiled", "loop"):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = fastoptim.DAdaptSGD(params, lr=1.0, backend=backend)
        with torch._inductor.config.patch(fx_graph_cache=False):
            for step_grads in grads:
                for param, grad in zip(params, step_grads, strict=True):
                    param.grad = grad.clone()
                optimizer.step()
        results[backend] = [p.detach() for p in params]
    assert any("fastoptim::stream_store(" in source for source in sources)
    for compiled, loop in zip(results["compiled"], results["loop"], strict=True):
        torch.testing.assert_close(compiled, loop, rtol=1e-5, atol=1e-6)


def _kernel(*body: str, pragma: str = "        #pragma omp for", tail: tuple[str, ...] = ()) -> str:
    """A kernel's source in inductor's layout: a parallel region around one loop over ``x0``."""
    lines = [
        _INCLUDE,
        'extern "C" void kernel(const float* in_ptr0, float* out_ptr0, float* out_ptr1, const int64_t ks0)',
        "{",
        "    #pragma omp parallel",
        "    {",
        pragma,
        f"        {_FOR}",
        "        {",
        f"            auto tmp0 = at::vec::Vectorized<float>::loadu(in_ptr0 + {_X0}, 16);",
        *(f"            {line}" for line in body),
        "        }",
        *tail,
        "    }",
        "}",
    ]
    return "\n".join(lines)


def test_stores_to_memory_never_read_go_through_the_helper_and_are_fenced() -> None:
    code = _kernel(
        f"auto tmp1 = at::vec::Vectorized<float>::loadu(out_ptr1 + {_X0}, 16);",
        _STORE,  # never read: streamed
        f"tmp0.store(out_ptr0 + {_X0}, static_cast<int64_t>(ks0 % 16));",  # with a count
        f"tmp1.store(out_ptr1 + {_X0});",  # read above: stays
    )
    lines = with_streamed_stores(code).split("\n")
    body = [line.strip() for line in lines[lines.index(_INCLUDE) :]]
    extent = "static_cast<int64_t>(ks0)"
    assert f"fastoptim::stream_store(tmp0, out_ptr0 + {_X0}, {extent});" in body
    count = "static_cast<int64_t>(ks0 % 16)"
    assert f"fastoptim::stream_store(tmp0, out_ptr0 + {_X0}, {extent}, {count});" in body
    assert f"tmp1.store(out_ptr1 + {_X0});" in body
    loop_end = len(lines) - 1 - lines[::-1].index("        }")
    assert lines[loop_end + 1] == "        fastoptim::stream_fence();"  # after the loop, in the region
    assert "namespace fastoptim" in "\n".join(lines)


def test_stores_stay_where_their_memory_is_read_or_their_threads_could_not_fence() -> None:
    read_later = _kernel(
        _STORE,
        tail=("        out_ptr1[static_cast<int64_t>(0L)] = out_ptr0[static_cast<int64_t>(0L)];",),
    )
    assert with_streamed_stores(read_later) == read_later
    combined = _kernel(
        "tmp0.store(out_ptr0 + static_cast<int64_t>(x0));", pragma="        #pragma omp parallel for"
    )
    assert with_streamed_stores(combined) == combined
    two_loops = _kernel(
        _STORE,
        tail=(
            f"        {_FOR}",
            "        {",
            f"            {_STORE}",
            "        }",
        ),
    )
    assert with_streamed_stores(two_loops) == two_loops
