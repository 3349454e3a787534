"""One loop for a reduction and the in-place update of the tensors it read, on CPU.

A reducing optimizer's first phase reads its states for a sum and then updates them in place:
D-Adaptation Adam sums ``g * s / (sqrt(v) + eps)`` over the old ``s`` and ``v`` and then
writes the new ``s``, ``m`` and ``v``. Inductor's CPU scheduler fuses a pointwise node into a
later reduction over the same elements, but never a reduction into a later pointwise node
(``CppScheduling.can_fuse_vertical`` refuses any pair whose first node reduces), so that phase
became two loops over every tensor, one to sum and one to update: 10 element reads and writes
where 7 suffice, and DAdaptAdam's first phase took 20 ms where its traffic needs 12.

DAdaptLion's phase sums over its old ``s``, updates ``s``, then sums over the new ``s``: a
reduction followed by a reduction that reads what the update wrote, again two loops.

The pair is safe to fuse when the second node does not read the reduction's result (it would
need the finished sum) and iterates over exactly the reduction's elements (a pointwise node over
all of them, or a reduction over the same ones). What orders
the two is then only that the update overwrites what the reduction read; the scheduler itself
checks, before it asks the backend, that both touch the same element in the same iteration
(``Scheduler.fusable_weak_dep``), and the CPU backend already generates such a fused loop (the
pointwise body inside the reduction loop) for the pairs it does accept. This module adds the
pair while the compiled runner's graphs compile, and nowhere else.

AdamP's and SGDP's sums run over each output channel of a ``(rows, columns)`` weight: a
reduction with two loops, rows kept and columns reduced. Inductor merges the two dimensions of a
pointwise loop over the same contiguous weight (the states' update) into one, and the CPU
scheduler then sees different loops. Before giving up on such a pair, this module splits the
pointwise loop like the reduction's (``recompute_size_and_body`` with the reduction's indexing,
as the scheduler itself does for pointwise pairs of compatible ranges) and asks again; if they
still do not fuse, the split is undone.

The patch is on a private class of torch. Where this torch's scheduler lacks it, nothing is
changed and the phase simply stays two loops (and where it cannot split and restore loops, no
loop is split). Inductor's on-disk cache does not see the patch, so the runner also passes
:data:`CACHE_KEY`, a graph pass (``cpu_codegen.round_trips``, then
``cpu_codegen.early_write_back``) whose identity is the hash of this file and those (and
of ``cpu_codegen.low_precision_codegen``'s,
``cpu_codegen.shared_region``'s, ``cpu_codegen.loop_invariants``'s and
``cpu_codegen.streaming_stores``'s):
graphs compiled with and without these changes never share a cache entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from fastoptim.runners.compiled.cpu_codegen import (
    early_write_back,
    kernel_source,
    loop_invariants,
    low_precision_codegen,
    round_trips,
    shared_region,
    streaming_stores,
)
from fastoptim.runners.compiled.cpu_codegen.attribute_patch import replaced
from fastoptim.runners.compiled.cpu_codegen.early_write_back import write_back_early
from fastoptim.runners.compiled.cpu_codegen.loop_invariants import invariants_hoisted
from fastoptim.runners.compiled.cpu_codegen.low_precision_codegen import low_precision_kernels
from fastoptim.runners.compiled.cpu_codegen.round_trips import drop_round_trips
from fastoptim.runners.compiled.cpu_codegen.shared_region import reductions_in_one_region
from fastoptim.runners.compiled.cpu_codegen.streaming_stores import streamed_stores

try:
    from torch._inductor.codegen.cpp import CppScheduling
    from torch._inductor.scheduler import FusedSchedulerNode, SchedulerNode, WeakDep
    from torch._inductor.utils import sympy_product
    from torch._inductor.virtualized import V
except ImportError:  # pragma: no cover - a torch without the CPU scheduler
    CppScheduling = FusedSchedulerNode = SchedulerNode = WeakDep = None

_ORIGINAL = getattr(CppScheduling, "can_fuse_vertical", None)
#: Whether this torch's scheduler can re-split a node's loops and undo it (torch 2.13 can).
_CAN_SPLIT = (
    _ORIGINAL is not None
    and all(hasattr(SchedulerNode, name) for name in ("snapshot_loop_state", "restore_loop_state"))
    and hasattr(CppScheduling, "_get_indexing_ranges_exprs")
)


class _FusionCacheKey(CustomGraphPass):
    """The runner's post-grad pass: drops unchanged write-backs, then writes states back early.

    See ``round_trips.drop_round_trips`` and
    ``early_write_back.write_back_early``; the uuid keys inductor's cache
    on this module, those, ``cpu_codegen.low_precision_codegen``,
    ``cpu_codegen.shared_region``, ``cpu_codegen.loop_invariants`` and
    ``cpu_codegen.streaming_stores`` (patches of the CPU backend the cache does not see
    either).
    """

    def __call__(self, graph: Any) -> None:
        drop_round_trips(graph)
        write_back_early(graph)

    def uuid(self) -> bytes:
        modules = (
            early_write_back,
            round_trips,
            shared_region,
            low_precision_codegen,
            loop_invariants,
            streaming_stores,
            kernel_source,
        )
        return get_hash_for_files((__file__, *(module.__file__ for module in modules)))


#: Passed to inductor as ``post_grad_custom_post_pass``; see the module's docstring.
CACHE_KEY = _FusionCacheKey()


def _reduction_then_its_update(node1: Any, node2: Any) -> bool:
    """Whether ``node2`` is a pass over ``node1``'s reduced elements, blind to ``node1``'s result.

    ``node2`` is pointwise, or itself a reduction over the same elements (a sum over the states
    the update just wrote, as DAdaptLion's).
    """
    if not node1.is_reduction() or node1.is_template() or node2.is_template():
        return False
    _, (vars1, reduce1) = node1.group
    _, (vars2, reduce2) = node2.group
    same_loop = tuple(vars2) == tuple(vars1) and tuple(reduce2) == tuple(reduce1)
    flat_loop = not tuple(reduce2) and tuple(vars2) == tuple(vars1) + tuple(reduce1)
    if not (same_loop if node2.is_reduction() else flat_loop):
        return False
    results = node1.get_buffer_names()
    return not any(dep.name in results for dep in node2.read_writes.reads if not isinstance(dep, WeakDep))


def _split_like(self: Any, pointwise: Any, reduction: Any) -> list[tuple[Any, Any]] | None:
    """Splits ``pointwise``'s merged loop into ``reduction``'s (kept, reduced) loops.

    (``reduction`` may also be a pointwise node over the same elements in two or more loops.)

    Inductor merges the dimensions of a pointwise loop over a contiguous ``(rows, columns)``
    tensor into one, while a reduction over the columns keeps two: the CPU scheduler then sees
    different loops and fuses nothing. Returns what undoes the split, or None when the loops do
    not cover the same elements (nothing is changed then).
    """
    snodes = pointwise.get_nodes()
    if not _CAN_SPLIT or pointwise.is_reduction() or not all(isinstance(n, SchedulerNode) for n in snodes):
        return None
    _, (vars1, reduce1) = pointwise.group
    _, (vars2, reduce2) = reduction.group
    loops = (*vars2, *reduce2)
    if len(vars1) != 1 or reduce1 or len(loops) < 2:
        return None
    if not V.graph.sizevars.statically_known_equals(vars1[0], sympy_product(loops)):
        return None
    undo = [(n, n.snapshot_loop_state()) for n in snodes]
    try:
        constraints = self._get_indexing_ranges_exprs(reduction)
        for n in snodes:
            n.recompute_size_and_body(extra_indexing_constraints=constraints)
    except Exception:  # internals of another torch: the loops stay as they were
        _undo(undo)
        return None
    if isinstance(pointwise, FusedSchedulerNode):
        undo.append((pointwise, pointwise.group))
        pointwise.group = snodes[0].group
    return undo


def _undo(undo: list[tuple[Any, Any]]) -> None:
    for node, state in reversed(undo):
        if isinstance(node, FusedSchedulerNode):
            node.group = state
        else:
            node.restore_loop_state(state)


def _fusable(self: Any, node1: Any, node2: Any) -> bool:
    return _ORIGINAL(self, node1, node2) or _reduction_then_its_update(node1, node2)


def _flat_and_shaped(node1: Any, node2: Any) -> tuple[Any, Any] | None:
    """Of a pair, the pointwise node whose loop may be split and the node whose loops it takes.

    A reduction's pointwise partner, or of two pointwise nodes the one with a merged loop (AdamP's
    Kahan store of the parameter, flat, after its projected update, per channel).
    """
    if node1.is_template() or node2.is_template():
        return None
    if node1.is_reduction() != node2.is_reduction():
        return (node2, node1) if node1.is_reduction() else (node1, node2)
    if node1.is_reduction():
        return None
    rank1, rank2 = len(node1.group[1][0]), len(node2.group[1][0])
    if rank1 == 1 and rank2 > 1:
        return node1, node2
    if rank2 == 1 and rank1 > 1:
        return node2, node1
    return None


def _can_fuse_vertical(self: Any, node1: Any, node2: Any) -> bool:
    if _fusable(self, node1, node2):
        return True
    pair = _flat_and_shaped(node1, node2)
    if pair is None:
        return False
    undo = _split_like(self, *pair)
    if undo is None:
        return False
    if _fusable(self, node1, node2):
        return True
    _undo(undo)
    return False


def reduction_update_fusion() -> contextlib.AbstractContextManager[None]:
    """Lets inductor's CPU scheduler fuse a reduction with the update that follows it."""
    return replaced(CppScheduling, "can_fuse_vertical", _can_fuse_vertical, enabled=_ORIGINAL is not None)


@contextlib.contextmanager
def inductor_patches() -> Iterator[None]:
    """Every patch of inductor the runner's graphs compile under (:data:`CACHE_KEY` keys them).

    :func:`reduction_update_fusion`, ``low_precision_codegen.low_precision_kernels``,
    ``shared_region.reductions_in_one_region``,
    ``loop_invariants.invariants_hoisted`` and
    ``streaming_stores.streamed_stores`` (each of the last three wraps the one before).
    """
    with (
        reduction_update_fusion(),
        low_precision_kernels(),
        reductions_in_one_region(),
        invariants_hoisted(),
        streamed_stores(),
    ):
        yield
