"""A kernel's parallel reductions in one OpenMP region, each thread going on to the next.

Inductor's CPU backend gives each parallel reduction a parallel region of its own: the shared
accumulators (one slot per thread) are declared before ``#pragma omp parallel``, each thread sums
its share of the loop (``#pragma omp for``) into its slot, and after the region the slots are
added up in thread order and stored. The one-pass graph of a reducing optimizer's chunk sums each
of its 16 tensors as it updates it, so a chunk call opens and joins 16 regions, and every thread
waits at the end of each one for the slowest.

While the runner's graphs compile (:func:`reductions_in_one_region`), a run of consecutive
reductions of one kernel, each its own block of that exact shape, none touching memory another
writes, becomes one region: the accumulators of all of them (renamed apart) before it, each
reduction's loop in it with ``nowait``, and all the additions of the slots and the stores after
it. Each thread sums the same iterations (the same static schedule over the same team) into the
same slots, which are added in the same order, so every result is the same to the bit
(``tests/test_shared_region.py``). Blocks of any other shape, and kernels without such a run, are
left as inductor wrote them.

Measured with ``benchmarks/patch_ab.py --patch shared_region`` (20M parameters, the same tensors
with and without; ``benchmarks/RESULTS.md``): DAdaptSGD 0.91 and Prodigy 0.99 of the time without
on 1000 tensors; 0-2% of a step on 100 tensors. On 100 bias-sized tensors, where a step is
nearly all fixed costs, a DAdaptSGD step's chunk calls took 1.33 ms before and 1.02 ms after.

Where this torch lacks the hook (``KernelGroup.codegen_group``), nothing is patched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from fastoptim.runners.compiled.cpu_codegen.kernel_source import CAN_REWRITE, POINTER, rewritten_kernels

_CAN_PATCH = CAN_REWRITE
_INDENT = " " * 4
#: A declaration in a reduction's prologue: ``float acc = 0;``, ``Vectorized<float> arr[n];``.
_DECLARATION = re.compile(
    r"^\s*(?!for\b|return\b)[A-Za-z_][\w:]*(?:<[\w:, <>]*>)?\s+([A-Za-z_]\w*)\s*(?:=|\[|;)"
)
_POINTER = re.compile(rf"\b{POINTER}\b")


def _at(level: int, text: str) -> str:
    return _INDENT * level + text


@dataclass(frozen=True)
class _Reduction:
    """One parallel reduction's block of a kernel, cut where the region begins and ends."""

    start: int
    end: int
    prologue: list[str]
    body: list[str]
    epilogue: list[str]
    pointers: frozenset[str]

    @property
    def writes(self) -> frozenset[str]:
        """The pointers it may write through (inductor's inputs are ``const in_ptrN``)."""
        return frozenset(name for name in self.pointers if not name.startswith("in_ptr"))

    def conflicts(self, other: _Reduction) -> bool:
        return bool(self.writes & other.pointers or other.writes & self.pointers)


def _blocks(lines: list[str], first: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each of the kernel's top-level blocks (``{`` and ``}`` at one indent)."""
    index = first
    while index < len(lines):
        if lines[index] == _at(1, "{"):
            end = lines.index(_at(1, "}"), index + 1)
            yield index, end
            index = end + 1
        else:
            index += 1


def _reduction(lines: list[str], start: int, end: int) -> _Reduction | None:
    """The block ``lines[start:end + 1]`` as a :class:`_Reduction`, or None if it is not one.

    The shape inductor gives a parallel reduction: ``{ {``, a prologue without pragmas or
    pointers that declares ``max_threads``, ``#pragma omp parallel``, a region that starts with
    ``int tid = ...`` and holds one worksharing loop (no other pragma but ``simd``), an epilogue
    without pragmas, ``} }``; and no pragma just before the block.
    """
    framed = lines[start + 1] == _at(2, "{") and lines[end - 1] == _at(2, "}")
    if not framed or lines[start - 1].lstrip().startswith("#"):
        return None
    inner = lines[start + 2 : end - 1]
    opens = [i for i, line in enumerate(inner) if line == _at(3, "#pragma omp parallel")]
    if len(opens) != 1 or inner[opens[0] + 1 : opens[0] + 2] != [_at(3, "{")]:
        return None
    close = inner.index(_at(3, "}"), opens[0] + 2)
    prologue, body, epilogue = inner[: opens[0]], inner[opens[0] + 2 : close], inner[close + 1 :]
    pragmas = [line for line in body if "#pragma" in line and " simd" not in line]
    if (
        body[:1] != [_at(4, "int tid = omp_get_thread_num();")]
        or pragmas != [_at(4, "#pragma omp for")]
        or _at(3, "int max_threads = omp_get_max_threads();") not in prologue
        or any("#pragma" in line or _POINTER.search(line) for line in prologue)
        or any("#pragma" in line for line in epilogue)
    ):
        return None
    pointers = frozenset(_POINTER.findall("\n".join(lines[start : end + 1])))
    return _Reduction(start, end, prologue, body[1:], epilogue, pointers)


def _runs(lines: list[str], first: int) -> list[list[_Reduction]]:
    """Runs of two or more adjacent reductions, none touching memory another of the run writes."""
    runs: list[list[_Reduction]] = []
    run: list[_Reduction] = []
    for start, end in _blocks(lines, first):
        reduction = _reduction(lines, start, end)
        joins = (
            reduction is not None
            and bool(run)
            and run[-1].end + 1 == start
            and not any(reduction.conflicts(earlier) for earlier in run)
        )
        if not joins:
            runs.append(run)
            run = []
        if reduction is not None:
            run.append(reduction)
    runs.append(run)
    return [run for run in runs if len(run) > 1]


def _renamed(lines: list[str], names: set[str], suffix: str) -> list[str]:
    if not names:
        return lines
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    return [pattern.sub(lambda match: match.group(1) + suffix, line) for line in lines]


def _one_region(run: list[_Reduction]) -> list[str]:
    """The blocks of ``run`` as one block: prologues, one region of ``nowait`` loops, epilogues."""
    prologues, bodies, epilogues = [], [], []
    for index, reduction in enumerate(run):
        names = {match.group(1) for line in reduction.prologue if (match := _DECLARATION.match(line))}
        suffix = f"_r{index}"
        prologues += _renamed(reduction.prologue, names, suffix)
        body = _renamed(reduction.body, names, suffix)
        body = [line + " nowait" if line == _at(4, "#pragma omp for") else line for line in body]
        bodies += [_at(4, "{"), *(_INDENT + line for line in body), _at(4, "}")]
        epilogues += _renamed(reduction.epilogue, names, suffix)
    region = [_at(3, "#pragma omp parallel"), _at(3, "{"), _at(4, "int tid = omp_get_thread_num();")]
    opening, closing = [_at(1, "{"), _at(2, "{")], [_at(2, "}"), _at(1, "}")]
    return [*opening, *prologues, *region, *bodies, _at(3, "}"), *epilogues, *closing]


def with_shared_regions(code: str) -> str:
    """A kernel's source with each run of independent parallel reductions in one region.

    Source without such a run (or in a shape this does not recognise) comes back unchanged.
    """
    if code.count("#pragma omp parallel") < 2:
        return code
    lines = code.split("\n")
    first = next((i + 1 for i, line in enumerate(lines) if line.startswith('extern "C"')), None)
    if first is None:
        return code
    try:
        runs = _runs(lines, first)
    except ValueError:  # a block without its closing brace: not inductor's layout
        return code
    for run in reversed(runs):
        lines[run[0].start : run[-1].end + 1] = _one_region(run)
    return "\n".join(lines)


def reductions_in_one_region() -> contextlib.AbstractContextManager[None]:
    """Inductor's CPU kernels run each run of independent parallel reductions in one region.

    Wraps whatever ``KernelGroup.codegen_group`` is when this is called
    (``kernel_source.rewritten_kernels``), so that it composes with
    ``register_cascade.sums_in_registers``.
    """
    return rewritten_kernels(with_shared_regions, enabled=_CAN_PATCH)
