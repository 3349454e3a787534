"""The compiled backend on a CUDA device (``torch.compile``'s Triton kernels) against the loop runner.

The same training problem and configurations as ``tests/test_compiled.py``, on ``cuda``: every
optimizer in float32, and in bf16 and fp16 with Kahan summation. Skipped where no CUDA device is
present (the development machine and CI have none); a session lent a GPU runs them.
"""

from __future__ import annotations

import pytest
import torch

from tests.cases import CASES, LOW_PRECISION_CASES, Case
from tests.problems import make_batches, make_model, max_abs_diff, params_of, train

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: the compiled backend's GPU path (Triton kernels through torch.compile)",
)

STEPS = 8


def _trained(case: Case, backend: str, dtype: torch.dtype) -> list[torch.Tensor]:
    model = make_model(dtype).to("cuda")
    batches = [(x.to("cuda"), y.to("cuda")) for x, y in make_batches(STEPS, dtype)]
    train(model, case.build(model.parameters(), backend=backend), batches)
    return params_of(model)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_compiled_equals_loop_on_cuda_in_float32(case: Case) -> None:
    compiled = _trained(case, "compiled", torch.float32)
    loop = _trained(case, "loop", torch.float32)
    # as on the CPU (1e-6, ADOPT without clipping 2e-5), with room for the GPU's reduction orders
    tolerance = 2e-5 if case.name == "adopt_l2_noclip" else 1e-5
    assert max_abs_diff(compiled, loop) <= tolerance


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES, ids=lambda case: case.name)
def test_compiled_low_precision_with_kahan_on_cuda_tracks_the_loop(case: Case, dtype: torch.dtype) -> None:
    compiled = _trained(case, "compiled", dtype)
    loop = _trained(case, "loop", dtype)
    assert max_abs_diff(compiled, loop) <= 4 * 2**-8  # a few bf16 ulps of weights near 1
