"""A graph pass: a state the step leaves unchanged is not written back.

The rules compute in float32, so a bf16 or fp16 state is read as ``s32 = s.to(float32)`` and
written back as ``copy_(s, s32)`` (rounded to the state's dtype), whether or not the rule changed
it. A rule that returns a state untouched (DAdaptSGD's ``z`` and ``x0``, Prodigy's ``p0``) thus
wrote it back unchanged: inductor cannot tell that rounding a widened value gives the value back,
and spent a read and a write of the state on it (in DAdaptSGD's bf16 step, a loop of its own over
``z``: 1.6x the float32 step's time for half its bytes).

Widening a float to a type with at least its precision and range and rounding it back is exact,
so :func:`drop_round_trips` replaces each such narrowing of a widened value by the value itself,
and drops the write-backs of a state into itself that result. It runs before any write-back moves
(``cpu_codegen.early_write_back``): every read of an input then reads its old value.
"""

from __future__ import annotations

import torch
from torch import fx

_COPY = torch.ops.aten.copy_.default
#: ``copy(dst, src)``: ``src``'s values in a tensor laid out as ``dst`` (functionalised ``copy_``).
_FUNCTIONAL_COPY = torch.ops.aten.copy.default
_CONVERT = torch.ops.prims.convert_element_type.default
#: ``(narrow, wide)`` pairs whose widening keeps every value (precision and exponent range).
_EXACT_WIDENINGS = {
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float64),
    (torch.float16, torch.float64),
    (torch.float32, torch.float64),
}


def meta_tensor(node: object) -> torch.Tensor | None:
    """The tensor inductor's meta holds for ``node``'s value; None for a non-tensor or no meta."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _cast_source(node: fx.Node) -> fx.Node | None:
    """What ``node`` casts to its own dtype, element for element: ``convert(x)`` or ``copy(dst, x)``."""
    if node.target is _CONVERT and not node.kwargs:
        return node.args[0] if isinstance(node.args[0], fx.Node) else None
    if node.target is _FUNCTIONAL_COPY and len(node.args) == 2 and not node.kwargs:
        source, result = meta_tensor(node.args[1]), meta_tensor(node)
        if source is not None and result is not None and source.shape == result.shape:
            return node.args[1]
    return None


def _unwidened(node: fx.Node) -> fx.Node | None:
    """The node whose value ``node`` equals exactly: ``x`` for a narrowing of ``x`` widened."""
    narrowed, source = meta_tensor(node), _cast_source(node)
    if narrowed is None or source is None or source.target is not _CONVERT:
        return None
    original = source.args[0]
    wide, value = meta_tensor(source), meta_tensor(original)
    if wide is None or value is None or value.dtype != narrowed.dtype or value.shape != narrowed.shape:
        return None
    return original if (value.dtype, wide.dtype) in _EXACT_WIDENINGS else None


def drop_round_trips(graph: fx.Graph) -> None:
    """Reads each exactly round-tripped value from its source; drops write-backs of an input into itself."""
    for node in list(graph.nodes):
        original = _unwidened(node)
        if original is not None:
            node.replace_all_uses_with(original)
            graph.erase_node(node)
    for node in list(graph.nodes):
        if node.target is _COPY and len(node.args) == 2 and node.args[0] is node.args[1] and not node.users:
            graph.erase_node(node)
    for node in reversed(list(graph.nodes)):
        if node.target is _CONVERT and not node.users:
            graph.erase_node(node)
