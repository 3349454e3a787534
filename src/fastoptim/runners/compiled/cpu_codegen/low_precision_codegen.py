"""Two patches of inductor's CPU code generation for bf16 and fp16 steps.

Both apply only while the compiled runner's graphs compile (:func:`low_precision_kernels`).

**The vector width.** Inductor vectorizes a loop over bf16 (or fp16) tensors by that dtype's
vector width, 32 elements with AVX-512, and keeps float32 arithmetic in pairs of vectors. It does
so only when every node fused into the loop touches the low-precision dtype
(``TilingSelect.select_tiling``); one node that reads only a float32 intermediate makes it fall
back to float32's width, 16 elements, and every bf16 load and store becomes a masked half vector.
DAdaptLion's bf16 step sums ``|s|`` over the new float32 ``s`` (which it also stores in bf16) and
so took 31 ms where its bytes need 18. Here a loop whose nodes all use one low-precision dtype or
none takes that dtype's width. Only the width changes (the code generated for each node is the
same, as in the loops inductor already widens); loops with float64 keep their choice.

**Stored values are read back rounded.** The Kahan compensation is ``new - stored``, where
``stored`` is ``new`` rounded to bf16 in the same loop. Inductor's CPU backend, to spare a
conversion, lets a later read of a bf16 value it has just rounded from float32 reuse the float32
value (``CppKernel.cache_dtype_convert``), so the compensation came out as zero and bf16 steps
lost their Kahan summation. torch 2.13 skips that shortcut under ``emulate_precision_casts``
(which the runner sets); torch 2.11 does not, so the shortcut is switched off here (a no-op
where torch already skips it).

Where this torch lacks a hook, that patch is left out.
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
_CAN_ROUND = cpp is not None and hasattr(getattr(cpp, "CppKernel", None), "cache_dtype_convert")


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


def _no_cached_conversion(self: Any, *args: Any) -> None:
    """A rounded value's float32 reads convert it back: the float32 value is not reused."""


@contextlib.contextmanager
def low_precision_kernels() -> Iterator[None]:
    """Inductor's CPU loops keep the bf16 width and read stored bf16 values back rounded."""
    tiling, kernel = getattr(cpp, "TilingSelect", None), getattr(cpp, "CppKernel", None)
    with (
        replaced(tiling, "select_tiling", _select_tiling, enabled=_CAN_WIDEN),
        replaced(kernel, "cache_dtype_convert", _no_cached_conversion, enabled=_CAN_ROUND),
    ):
        yield
