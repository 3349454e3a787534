"""A patch of inductor's CPU code generation for bf16 and fp16 steps: the loops' vector width.

Inductor vectorizes a loop over bf16 (or fp16) tensors by that dtype's vector width, 32 elements
with AVX-512, and keeps float32 arithmetic in pairs of vectors. It does so only when every node
fused into the loop touches the low-precision dtype (``TilingSelect.select_tiling``); one node
that reads only a float32 intermediate makes it fall back to float32's width, 16 elements, and
every bf16 load and store becomes a masked half vector. DAdaptLion's bf16 step sums ``|s|`` over
the new float32 ``s`` (which it also stores in bf16) and so took 31 ms where its bytes need 18.
Here a loop whose nodes all use one low-precision dtype or none takes that dtype's width, while
the compiled runner's graphs compile (:func:`low_precision_kernels`). Only the width changes (the
code generated for each node is the same, as in the loops inductor already widens); loops with
float64 keep their choice. Where this torch lacks a hook, nothing is patched.

(Kahan's compensation reads the value just rounded to bf16; inductor would reuse the float32 value
instead, but skips that under ``emulate_precision_casts``, which the core runner sets.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from fastoptim.runners.compiled.cpu_codegen.attribute_patch import replaced

try:
    from torch._inductor.codegen import cpp
except ImportError:  # pragma: no cover - a torch without the CPU backend
    cpp = None

_TILING_HOOKS = ("TilingSelect", "get_loop_body_lowp_fp", "_get_loop_body", "_get_dtype_from_loopbodies")
_CAN_WIDEN = cpp is not None and all(hasattr(cpp, name) for name in _TILING_HOOKS)
_ORIGINAL_SELECT = cpp.TilingSelect.select_tiling if _CAN_WIDEN else None
_ORIGINAL_LOWP = cpp.get_loop_body_lowp_fp if _CAN_WIDEN else None


def _shared_low_precision(fn_list: Any) -> torch.dtype | None:
    """The one low-precision dtype of a loop whose other nodes use none (and no float64)."""
    bodies = cpp._get_loop_body(fn_list)
    kinds = {_ORIGINAL_LOWP(body)[0] for body in bodies}
    low = kinds - {None}
    if len(low) != 1 or None not in kinds or torch.float64 in cpp._get_dtype_from_loopbodies(bodies):
        return None
    return next(iter(low))


def _select_tiling(self: Any, fn_list: Any, var_sizes_list: Any) -> Any:
    dtype = _shared_low_precision(fn_list)
    if dtype is None:
        return _ORIGINAL_SELECT(self, fn_list, var_sizes_list)
    with replaced(cpp, "get_loop_body_lowp_fp", lambda body: (dtype, True)):  # what the choice asks
        return _ORIGINAL_SELECT(self, fn_list, var_sizes_list)


@contextlib.contextmanager
def low_precision_kernels() -> Iterator[None]:
    """Inductor's CPU loops over bf16/fp16 tensors keep that dtype's vector width."""
    with replaced(getattr(cpp, "TilingSelect", None), "select_tiling", _select_tiling, enabled=_CAN_WIDEN):
        yield
