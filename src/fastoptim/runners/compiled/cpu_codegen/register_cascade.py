"""Inductor's float32 sums on CPU: the same additions, the running sum kept in a register.

Inductor's CPU kernels sum float32 values by cascade (pairwise) summation when a reduction is
longer than 4,096 vectors: each thread adds its values into ``sum_stk[0]`` of a
``CascadeSumHelper`` (``acc = cascade_sum_combine(x, &helper);``) and, every 4,096 additions,
carries that partial sum up a stack, so that the rounding error grows with the logarithm of the
length instead of the length. The stack is a ``std::vector``, on the heap, and the running sum
is its first element: the compiler cannot tell it from the outputs the loop stores to, so every
addition loads the running sum from memory and stores it back, with the count of additions. The
kernel of a D-Adaptation SGD chunk (8 weights of 399,424 elements and 8 biases of 632; the same
tensors for every variant, the caches flushed before each call, medians of 60 interleaved calls)
took 2.98, 3.36, 3.08 and 3.43 ms in four runs, and 2.95, 3.24, 2.99 and 3.13 ms with this
module's rewrite (plain float32 sums in registers, without the cascade, were no faster than the
rewrite).

While the runner's graphs compile (:func:`sums_in_registers`), each generated kernel's
``acc = cascade_sum_combine(x, &helper);`` becomes ``acc = fastoptim::cascade_add(acc, x,
&helper);`` and the final ``acc = cascade_sum_final(&helper);`` becomes ``acc =
fastoptim::cascade_total(acc, &helper);``: the running sum is the kernel's own accumulator
variable, a local the compiler keeps in a register, and the helper keeps the count and the stack,
carried exactly as torch's code carries it. The additions, their order and so every result bit
are the ones inductor's code makes (the test compares them bit for bit). A helper is rewritten
only where its accumulator starts at zero and nothing else assigns it; anything else is left as
inductor wrote it.

Where this torch lacks the hook (``KernelGroup.codegen_group``), nothing is patched. The rewrite
relies on the fields of torch's ``CascadeSumHelper`` (``sum_stk``, ``depth``, ``num_chunks``,
``index``), the same in torch 2.11 and 2.13.
"""

from __future__ import annotations

import contextlib
import re

from fastoptim.runners.compiled.cpu_codegen.kernel_source import (
    CAN_REWRITE,
    PREFIX_INCLUDE,
    rewritten_kernels,
    with_helpers,
)

_CAN_PATCH = CAN_REWRITE

#: What the rewritten kernels call: torch's combine and final with the running sum passed in and
#: returned (``sum`` plays the part of the helper's ``sum_stk[0]``, which stays zero).
HELPER_SOURCE = r"""
namespace fastoptim {
template <typename T, uint64_t kChunkSize>
inline T carried(T sum, CascadeSumHelper<T, kChunkSize>* c) {
  if (c->depth == 0 || ++c->index != kChunkSize) return sum;
  c->index = 0;
  uint64_t mask = ++c->num_chunks;
  if (c->depth > 1 && (mask & 1) == 0) {
    auto& s = c->sum_stk;
    s[1] = s[1] + sum;
    sum = s[0];
    mask >>= 1;
    for (uint64_t j = 2; j < c->depth && (mask & 1) == 0; ++j) {
      s[j] = s[j] + s[j - 1];
      s[j - 1] = s[0];
      mask >>= 1;
    }
  }
  return sum;
}

template <typename T, uint64_t kChunkSize>
inline T cascade_add(T sum, T data, CascadeSumHelper<T, kChunkSize>* c) {
  return carried(sum + data, c);
}

template <typename T, uint64_t kChunkSize>
inline T cascade_add(T sum, T data, int64_t tail_size, CascadeSumHelper<T, kChunkSize>* c) {
  return carried(T::set(sum, sum + data, tail_size), c);
}

template <typename T, uint64_t kChunkSize>
inline T cascade_total(T sum, CascadeSumHelper<T, kChunkSize>* c) {
  for (uint64_t i = 1; i < c->depth; ++i) sum = sum + c->sum_stk[i];
  return sum;
}
}  // namespace fastoptim
"""
_COMBINE = re.compile(r"^(\s*)(\w+) = cascade_sum_combine\((.+), &(\w+)\);$")
_FINAL = re.compile(r"^(\s*)(\w+) = cascade_sum_final\(&(\w+)\);$")


def _running_sums(lines: list[str]) -> dict[str, str]:
    """Helper -> the variable its combines and its final assign, where the rewrite is safe.

    Safe: every combine and final of the helper assign one variable, which starts at zero and
    is assigned nowhere else: its other assignments are all declarations ``= <type>(0);`` (a
    kernel's source repeats names in each of its loops' blocks).
    """
    assigned: dict[str, set[str]] = {}
    for line in lines:
        match = _COMBINE.match(line) or _FINAL.match(line)
        if match:
            assigned.setdefault(match.groups()[-1], set()).add(match.group(2))
    sums = {}
    for helper, variables in assigned.items():
        if len(variables) != 1:
            continue
        variable = next(iter(variables))
        writes = [line for line in lines if re.search(rf"\b{variable} = ", line)]
        ours = [line for line in writes if _COMBINE.match(line) or _FINAL.match(line)]
        others = [line for line in writes if line not in ours]
        zero = re.compile(rf"[\w:<>, ]+ {variable} = [\w:<>, ]+\(0\);$")
        if others and all(zero.fullmatch(line.strip()) for line in others):
            sums[helper] = variable
    return sums


def with_register_sums(code: str) -> str:
    """A kernel's source with its cascade sums' running sums in their accumulator variables.

    ``acc = cascade_sum_combine(x, &h);`` becomes ``acc = fastoptim::cascade_add(acc, x, &h);`` and
    ``acc = cascade_sum_final(&h);`` becomes ``acc = fastoptim::cascade_total(acc, &h);`` for each
    helper whose accumulator passes :func:`_running_sums`; other source comes back unchanged.
    """
    if "cascade_sum_combine(" not in code or code.count(PREFIX_INCLUDE) != 1:
        return code
    lines = code.split("\n")
    sums = _running_sums(lines)
    if not sums:
        return code
    for i, line in enumerate(lines):
        combine, final = _COMBINE.match(line), _FINAL.match(line)
        if combine and combine.group(4) in sums:
            indent, variable, arguments, helper = combine.groups()
            lines[i] = f"{indent}{variable} = fastoptim::cascade_add({variable}, {arguments}, &{helper});"
        elif final and final.group(3) in sums:
            indent, variable, helper = final.groups()
            lines[i] = f"{indent}{variable} = fastoptim::cascade_total({variable}, &{helper});"
    return with_helpers("\n".join(lines), HELPER_SOURCE)


def sums_in_registers() -> contextlib.AbstractContextManager[None]:
    """Inductor's CPU kernels keep their float32 cascade sums' running sum in a register."""
    return rewritten_kernels(with_register_sums, enabled=_CAN_PATCH)
