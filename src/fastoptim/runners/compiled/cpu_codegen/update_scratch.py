"""A scratch buffer, hot in the cache, for an update that a step reads twice (AdamP's).

AdamP's compiled step makes two passes over a weight: the first updates the moments and sums
``p * u`` per channel, where ``u = m / (sqrt(v) / c + eps)``; the second needs those sums, so it
applies ``u`` only then, and reads ``m``, ``v`` and ``p`` again to recompute it: seven tensors read
per weight, against Adam's four. Storing ``u`` in a buffer of its own instead costs a write and a
read of that buffer, and a write to memory that is not cached first reads the line from memory:
no cheaper, as long as every weight has a buffer of its own (a 16-weight chunk's buffers span
16 weights).

One buffer shared by every weight, reused call after call, stays in the cache: the first pass
writes it over what the last weight's second pass just read, the second pass reads it back from
the cache, and only ``p`` comes from memory again. So a weight of at least
:data:`MIN_ELEMENTS` and at most :data:`MAX_ELEMENTS` elements on the CPU is stepped by a call of
its own (a chunk of one row), with a view of the optimizer's buffer at its start as an extra
state of its row: the rule stores its update there (the write-back of a state,
``cpu_codegen.early_write_back``, moves it into the first pass and points the second
pass at it). Calls of one row cost more than a share of a 16-row call; smaller weights stay in
16-row chunks, whose second passes find their tensors in the cache anyway. A larger weight would
not fit in the cache: the buffer would be written and read from memory.

On the development CPU (2 cores, 2 MB of L2 cache per core), AdamP on 20M parameters took
0.87-0.95 of its time without the buffer, in 400 to 20 tensors (weights of 100K to 2M elements;
``benchmarks/update_scratch_ab.py``, the history of ``benchmarks/RESULTS.md``). The values are the same: the
buffer holds what the second pass computed from ``m`` and ``v`` before.

The buffer is one per optimizer, device and dtype, as large as the largest weight that uses it
(at most :data:`MAX_ELEMENTS` elements: 8 MB in float32).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from fastoptim.runners.compiled.inputs import Layout, Row, compute_dtype
from fastoptim.runners.probe import RuleTraits

#: Fewest elements of a weight stepped with the buffer: a call of one row costs about 20 µs.
MIN_ELEMENTS = 1 << 16
#: Most elements of a weight stepped with the buffer: beyond, it no longer stays in the cache.
MAX_ELEMENTS = 1 << 21

#: Per optimizer: (device, dtype) -> the buffer.
_BUFFERS: weakref.WeakKeyDictionary[Any, dict[tuple[torch.device, torch.dtype], Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _uses_scratch(row: Row, layout: Layout) -> bool:
    """Whether ``row`` is a weight on the CPU, passed as a channel view, of the right size."""
    if layout is None or layout[-1] != 2:
        return False
    param = row[0]
    return param.device.type == "cpu" and MIN_ELEMENTS <= param.numel() <= MAX_ELEMENTS


def _buffer(optimizer: Any, device: torch.device, dtype: torch.dtype, numel: int) -> Tensor:
    """The optimizer's buffer for ``device`` and ``dtype``, of at least ``numel`` elements."""
    buffers = _BUFFERS.setdefault(optimizer, {})
    buffer = buffers.get((device, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(device, dtype)] = torch.empty(numel, dtype=dtype, device=device)
    return buffer


def with_scratch(optimizer: Any, traits: RuleTraits, rows: list[Row], layouts: list[Layout]) -> list[bool]:
    """Gives the rows stepped alone a view of the optimizer's buffer as a last state.

    For optimizers whose rule takes one (``RuleTraits.stages_update``), every row
    that is a weight on the CPU passed as a channel view (each tensor of the row an alias of its
    shape) of :data:`MIN_ELEMENTS` to :data:`MAX_ELEMENTS` elements gets a view of the buffer's
    start, shaped as the parameter, in ``rows`` and ``layouts`` (replaced in place).

    Returns:
        Per row, whether it got one.
    """
    if not traits.stages_update:
        return [False] * len(rows)
    chosen = [_uses_scratch(row, layout) for row, layout in zip(rows, layouts, strict=True)]
    largest: dict[tuple[torch.device, torch.dtype], int] = {}
    for row, uses in zip(rows, chosen, strict=True):
        if uses:
            key = (row[0].device, compute_dtype(row[0].dtype))
            largest[key] = max(largest.get(key, 0), row[0].numel())
    buffers = {key: _buffer(optimizer, *key, numel) for key, numel in largest.items()}
    for index, uses in enumerate(chosen):
        if not uses:
            continue
        (param, grad, states, comp), layout = rows[index], layouts[index]
        assert layout is not None
        dtype = compute_dtype(param.dtype)
        view = buffers[(param.device, dtype)][: param.numel()].view(param.shape).detach()
        p_dtype, g_dtype, state_dtypes, comp_dtype, rank = layout
        rows[index] = (param, grad, (*states, view), comp)
        layouts[index] = (p_dtype, g_dtype, (*state_dtypes, dtype), comp_dtype, rank)
    return chosen


def forget_scratch(optimizer: Any) -> None:
    """Drops the optimizer's buffers."""
    _BUFFERS.pop(optimizer, None)


def buffer_elements(optimizer: Any) -> int:
    """Elements in all of the optimizer's buffers (for tests and memory reports)."""
    return sum(buffer.numel() for buffer in _BUFFERS.get(optimizer, {}).values())
