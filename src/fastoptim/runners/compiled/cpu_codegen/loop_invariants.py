"""Scalar work that is the same in every iteration of a kernel's innermost loop, done once before it.

Inductor's CPU kernels inline what a loop needs of 0-d and per-row values into its body: AdamP's
and SGDP's update loop (over a weight's columns, one row at a time) computes its projection's
decisions and coefficient from the sums of the pass before, with three square roots and five
divisions, for every vector of 16 elements. The C++ compiler cannot move that work out of the
loop: the values are loaded through pointers that the loop's stores might alias, and inductor
compiles with ``-fmath-errno``, so a square root has a side effect.

While the runner's graphs compile (:func:`invariants_hoisted`), each innermost loop's
statements ``auto tmpN = <expression>;`` that every branch of its body (the vectorised one and
the masked tail) makes alike, and whose expression reads neither the loop's variable, nor a
value the loop assigns, nor memory the loop writes, nor a vector load, go before the loop, in a
block of their own with it (and before its ``#pragma omp for`` where it has one, so that each
thread computes them once). Loops after another directive (``simd``, ``ivdep``) and the inner
loops of a ``collapse(n)`` nest are left as they are. The same operations on the same values:
the results are the same bits (``tests/test_loop_invariants.py``; inductor compiles with
``-ffp-contract=off``). Integer divisions and remainders stay in the loop, which may run no
iteration where a size is zero.

Measured with ``benchmarks/patch_ab.py --patch loop_invariants`` (20M parameters in 100
tensors, the same tensors with and without; ``benchmarks/RESULTS.md``): SGDP 0.84 and AdamP 0.90
of the time without.

Where this torch lacks the hook (``KernelGroup.codegen_group``), nothing is patched.
"""

from __future__ import annotations

import contextlib
import re

from fastoptim.runners.compiled.cpu_codegen.kernel_source import (
    CAN_REWRITE,
    POINTER,
    closing_brace,
    indent,
    rewritten_kernels,
)

_CAN_PATCH = CAN_REWRITE
_STATEMENT = re.compile(r"^\s*auto (tmp\d+) = (.*);$")
_LOOP = re.compile(r"^\s*for\(int64_t (x\d+)=")
#: Any loop, in either of inductor's layouts (a tail's scalar loop is ``for (int64_t x0_tail = ...``).
_ANY_LOOP = re.compile(r"^\s*for\s*\(")
_BRANCH = re.compile(r"^\s*if\(C10_(?:UN)?LIKELY\(")
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")
#: Names a loop body assigns: ``auto x =``, ``float x =``, ``x =``, ``x[...] =``, ``x.store(``.
_ASSIGNED = re.compile(r"^\s*(?:[\w:<>, ]+\s)?(\w+)(?:\[[^\]]*\])?\s*(?:[-+*/]?=(?!=)|\.store\()")
#: Work that must stay where it was: vector loads, integer division and remainder.
_KEPT = re.compile(r"loadu|load\(|div_floor|mod\(|%")
#: A load of one element of a buffer (through an index that may be a size or loop variable).
_SCALAR_LOAD = re.compile(rf"^{POINTER}\[[^\]]*\]$")
#: A conversion to a floating-point value (of a size, say), which no longer divides as integers.
_FLOAT_CONVERSION = re.compile(r"^(?:c10::convert|static_cast)<(?:float|double)>\(")


def _written(body: list[str]) -> set[str]:
    """Names the loop body assigns or stores through (pointers included)."""
    names = {match.group(1) for line in body if (match := _ASSIGNED.match(line))}
    for line in body:
        names |= set(re.findall(rf"\.store\(({POINTER})", line))
        names |= set(re.findall(rf"atomic_add\(&({POINTER})", line))
    return names


def _branches(body: list[str]) -> list[list[tuple[str, str]]]:
    """The ``(name, expression)`` statements of each branch of the body (or of the body)."""
    branches: list[list[tuple[str, str]]] = []
    for line in body:
        if _BRANCH.match(line):
            branches.append([])
        elif (match := _STATEMENT.match(line)) and branches:
            branches[-1].append((match.group(1), match.group(2)))
    if not branches:
        branches = [[match.groups() for line in body if (match := _STATEMENT.match(line))]]
    return branches


def _invariants(variable: str, body: list[str]) -> list[tuple[str, str]]:
    """The statements of ``body`` (in order) that may run once before its loop over ``variable``."""
    branches = _branches(body)
    common = dict(branches[0])
    for branch in branches[1:]:
        common = {name: expression for name, expression in branch if common.get(name) == expression}
    written = _written(body)
    hoisted: list[tuple[str, str]] = []
    names: set[str] = set()
    integers: set[str] = set()  # values that may be integers: sizes, indices and what follows
    for name, expression in branches[0]:
        used = set(_NAME.findall(expression))
        from_integers = bool(used & integers) or bool(re.search(r"\b(?:ks|x)\d+\b", expression))
        if from_integers and not (_FLOAT_CONVERSION.match(expression) or _SCALAR_LOAD.match(expression)):
            integers.add(name)
        if common.get(name) != expression or _KEPT.search(expression):
            continue
        depends = {used_name for used_name in used if used_name in written and used_name not in names}
        if variable in used or depends or ("/" in expression and from_integers):
            continue  # an integer division stays where the loop guards it
        hoisted.append((name, expression))
        names.add(name)
    return hoisted


def _in_collapsed_nest(lines: list[str], index: int) -> bool:
    """Whether the loop at ``lines[index]`` is an inner loop of a ``collapse(n)`` nest.

    (Collapsed loops must stay perfectly nested.)
    """
    before = index - 1
    while before >= 0 and (lines[before].strip() == "{" or _LOOP.match(lines[before])):
        before -= 1
    return before >= 0 and before < index - 1 and "collapse(" in lines[before]


def with_invariants_hoisted(code: str) -> str:
    """A kernel's source with each innermost loop's invariant statements before the loop."""
    lines = code.split("\n")
    index = 0
    while index < len(lines):
        match = _LOOP.match(lines[index])
        if match is None or index + 1 >= len(lines) or lines[index + 1].strip() != "{":
            index += 1
            continue
        end = closing_brace(lines, index + 1)
        if end is None:
            return code  # not inductor's layout
        body = lines[index + 2 : end]
        if any(_ANY_LOOP.match(line) for line in body):
            index += 1  # an outer loop: its inner loops in inductor's usual layout come next
            continue
        hoisted = _invariants(match.group(1), body)
        start = index - 1 if lines[index - 1].lstrip().startswith("#pragma omp") else index
        blocked = " simd" in lines[start] or lines[start - 1].lstrip().startswith("#pragma")
        if not hoisted or blocked or _in_collapsed_nest(lines, index):
            index = end + 1
            continue
        names = {name for name, _ in hoisted}
        kept = [
            line
            for line in body
            if not ((statement := _STATEMENT.match(line)) and statement.group(1) in names)
        ]
        outer = indent(lines[start])
        block = [
            outer + "{",
            *(f"{outer}auto {name} = {expression};" for name, expression in hoisted),
            *lines[start : index + 2],
            *kept,
            lines[end],
            outer + "}",
        ]
        lines[start : end + 1] = block
        index = start + len(block)
    return "\n".join(lines)


def invariants_hoisted() -> contextlib.AbstractContextManager[None]:
    """Inductor's CPU kernels compute each innermost loop's invariant scalars once, before it.

    Wraps whatever ``KernelGroup.codegen_group`` is when called, so that it composes with the
    other rewrites of the kernels' source.
    """
    return rewritten_kernels(with_invariants_hoisted, enabled=_CAN_PATCH)
