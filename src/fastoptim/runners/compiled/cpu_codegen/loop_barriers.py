"""A barrier after a kernel's loop only where a later loop needs it.

Inductor's CPU backend puts the loops of a graph's kernels into one OpenMP parallel region, each a
worksharing loop (``#pragma omp for``), which ends with OpenMP's implicit barrier: every thread
waits there for the slowest. A compiled chunk steps 16 tensors, one loop (or two) each, and most
of those loops touch tensors no other loop touches, so most of those waits guard nothing; on the
2-core development CPU they cost about 3 µs a tensor (a Lion step on 1000 tensors of 20,000
elements: 22.6 and 25.9 ms with them, 19.8 and 21.8 without).

While the runner's graphs compile (:func:`barriers_where_needed`), a kernel whose code is a single
worksharing loop, not inside another loop, gets ``nowait``, and an explicit ``#pragma omp
barrier`` goes before a kernel that reads or writes a buffer that a loop since the last barrier
wrote, or that writes a buffer such a loop read. Buffers count by their memory: a mutated input
and the buffer inductor writes it through are one, and so are buffers inductor reuses in place.
Any other kernel code (a kernel with several loops, a reduction with its own parallel region) is
left as it is, and what it touches still counts. The end of the parallel region remains a
barrier for all.

Where this torch lacks the hook (``KernelGroup.finalize_kernel``), nothing is patched.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastoptim.runners.compiled.cpu_codegen.attribute_patch import replaced
from fastoptim.runners.compiled.cpu_codegen.kernel_source import indent

try:
    from torch._inductor.codegen import cpp
    from torch._inductor.virtualized import V
except ImportError:  # pragma: no cover - a torch without the CPU backend
    cpp = None

_CAN_PATCH = cpp is not None and hasattr(getattr(cpp, "KernelGroup", None), "finalize_kernel")
_ORIGINAL = cpp.KernelGroup.finalize_kernel if _CAN_PATCH else None
_FOR = "#pragma omp for"
_PARALLEL = "#pragma omp parallel"


def _memory(group: Any, name: str) -> str:
    """One name for every buffer sharing ``name``'s memory (mutations, in-place reuse)."""
    real = V.graph.scheduler.mutation_real_name.get(name, name)
    for candidate in (name, real):
        shared = group.args.inplace_buffers.get(candidate)
        if shared is not None and hasattr(shared, "inner_name"):
            return shared.inner_name
    return real


def _reads_and_writes(group: Any, nodes: list[Any]) -> tuple[set[str], set[str]]:
    """The memory the scheduler nodes of one kernel read and write."""
    reads, writes = set(), set()
    for node in nodes:
        for inner in node.get_nodes():
            reads |= {dep.name for dep in inner.read_writes.reads}
            writes |= {dep.name for dep in inner.read_writes.writes} | set(inner.get_buffer_names())
            for buffer in inner.get_outputs():
                writes |= set(buffer.get_mutations())
    return {_memory(group, name) for name in reads}, {_memory(group, name) for name in writes}


def _pragmas(lines: list[Any]) -> list[int]:
    """Indices of OpenMP directives that are not ``simd`` (inner vector loops)."""
    return [
        i
        for i, line in enumerate(lines)
        if isinstance(line, str) and line.lstrip().startswith("#pragma omp") and " simd" not in line
    ]


def _outermost_loop(lines: list[Any], index: int) -> bool:
    """Whether ``lines[index]`` is a worksharing loop that no loop of the kernel encloses.

    (A worksharing loop inside a serial loop runs once per outer iteration, and its iterations
    may go to other threads each time.)
    """
    before = lines[:index]
    return lines[index].lstrip().startswith(_FOR) and not any(
        isinstance(line, str) and line.lstrip().startswith("for(") for line in before
    )


def _finalize_kernel(self: Any, new_kernel: Any, nodes: list[Any]) -> None:
    lines = self.loops_code._lines
    mark = len(lines)
    _ORIGINAL(self, new_kernel, nodes)
    emitted = lines[mark:]
    pragmas = _pragmas(emitted)
    since = self.__dict__.setdefault("_fastoptim_since_barrier", [set(), set()])
    try:
        reads, writes = _reads_and_writes(self, nodes)
    except Exception:  # unknown to this torch: wait before the kernel, and after it as inductor does
        reads = writes = None
    opened = bool(pragmas) and emitted[pragmas[0]].lstrip().startswith(_PARALLEL)
    if opened:  # a new region: every earlier loop has ended
        since[:] = [set(), set()]
        pragmas = pragmas[1:]
    elif reads is None or since[0] is None or (reads | writes) & since[1] or writes & since[0]:
        first = next((line for line in emitted if isinstance(line, str)), "")
        lines.insert(mark, indent(first) + "#pragma omp barrier")
        mark += 1
        since[:] = [set(), set()]
    if reads is None:
        since[:] = [None, None]  # the next kernel waits for this one
        return
    if len(pragmas) == 1 and _outermost_loop(emitted, pragmas[0]) and self.ws.in_parallel:
        lines[mark + pragmas[0]] += " nowait"
    since[0] |= reads
    since[1] |= writes


def barriers_where_needed() -> contextlib.AbstractContextManager[None]:
    """Inductor's CPU kernels wait after a loop only where a later loop depends on it."""
    kernel_group = getattr(cpp, "KernelGroup", None)
    return replaced(kernel_group, "finalize_kernel", _finalize_kernel, enabled=_CAN_PATCH)
