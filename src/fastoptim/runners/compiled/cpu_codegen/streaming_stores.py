"""Stores to memory a kernel never reads go around the caches (non-temporal stores), on CPU.

A store to a cache line that is not in the cache first reads the line from memory (a
read-for-ownership), and those reads are not prefetched as loads are: on the development VM a
tensor a kernel writes without reading costs more than one it reads and writes back. D-Adaptation
SGD with momentum 0 sets the parameter to ``x0 - s`` without reading it. Timed on 20M float32
elements, 2 threads, the caches flushed before each call (a /tmp C file): ``s += a g; p = x0 -
s`` took 12.33 ms with plain stores, 11.13 ms reading ``p`` as well (``p = 0 · p + x0 - s``), and
9.32 ms with the store to ``p`` non-temporal, which skips the read.

While the runner's graphs compile (:func:`streamed_stores`), a vector store
``tmpN.store(ptr + index[, count]);`` becomes ``fastoptim::stream_store(tmpN, ptr + index,
extent[, count]);`` where the kernel never reads ``ptr`` (it appears nowhere but in its stores
and the kernel's signature), all of ``ptr``'s stores are in one loop, and no ``#pragma omp
parallel for`` (whose threads would not pass the fence below) starts a loop around them.
``extent`` is the store's innermost loop's length. The helper streams a whole float32 or float64
vector (``count``, when given, its full size) when its address is aligned to a vector register
(AVX-512 or AVX2; a tensor's storage is, a view at an offset may not be) and the loop covers at
least :data:`MIN_STREAM_BYTES`. Otherwise (a loop's tail, a partial ``count``; a smaller
tensor; an unaligned address; another type) it stores as before, after asking for the line
:data:`PREFETCH_BYTES` ahead, for writing. Then a plain ``p = x0 - s`` took 11.11 ms against
11.14 ms reading ``p``, and at an unaligned address 11.20 ms, against 17.11 ms without the
prefetch and 11.28 ms reading ``p``. Each thread issues ``_mm_sfence()`` after the outermost loop
around the stores, inside the parallel region, so that its non-temporal stores are visible
before the region's threads join.

Values are unchanged: only how they reach memory. Smaller tensors keep plain stores: whatever
reads them next (a model's forward pass) may still find them in the cache. On 20M parameters in
1000 tensors (weights of 160 KB) a DAdaptSGD step took 29.1-30.4 ms with a threshold of 1 MiB
(plain stores with the prefetch), 27.0-27.2 ms with 64 KiB, and 32.1-32.6 ms with 1 MiB and no
prefetch for them (compiled AdamW 22.9 ms; a /tmp script, 600 MB written before each step).

Where this torch lacks the hook (``KernelGroup.codegen_group``), nothing is patched.
"""

from __future__ import annotations

import contextlib
import re

from fastoptim.runners.compiled.cpu_codegen.kernel_source import (
    CAN_REWRITE,
    POINTER,
    PREFIX_INCLUDE,
    closing_brace,
    indent,
    rewritten_kernels,
    with_helpers,
)

_CAN_PATCH = CAN_REWRITE
#: The smallest loop, in bytes stored, whose stores are streamed: a smaller tensor may be read
#: again from the cache before it leaves it (see the module's docstring).
MIN_STREAM_BYTES = 65536

#: How far ahead of a plain store to memory the kernel never reads the helper asks for the line
#: (for writing), where it does not stream (a smaller tensor, an unaligned view, another type): a
#: plain store's own read of the line is not prefetched, and fetched ahead it costs no more than
#: reading the tensor.
PREFETCH_BYTES = 2048
#: What the rewritten kernels call. ``stream_store`` streams a whole float32 or float64 vector
#: (``Vectorized`` or ``VectorizedN``, as inductor's float64 loops use) and stores anything else
#: as ``value.store(ptr, count)`` would.
HELPER_SOURCE = rf"""
namespace fastoptim {{
template <typename V, typename T> struct Streamable : std::false_type {{}};
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
inline void stream_vector(const at::vec::Vectorized<float>& v, float* p) {{ _mm512_stream_ps(p, v); }}
inline void stream_vector(const at::vec::Vectorized<double>& v, double* p) {{ _mm512_stream_pd(p, v); }}
#else
inline void stream_vector(const at::vec::Vectorized<float>& v, float* p) {{ _mm256_stream_ps(p, v); }}
inline void stream_vector(const at::vec::Vectorized<double>& v, double* p) {{ _mm256_stream_pd(p, v); }}
#endif
template <> struct Streamable<at::vec::Vectorized<float>, float> : std::true_type {{}};
template <> struct Streamable<at::vec::Vectorized<double>, double> : std::true_type {{}};
template <int N> struct Streamable<at::vec::VectorizedN<float, N>, float> : std::true_type {{}};
template <int N> struct Streamable<at::vec::VectorizedN<double, N>, double> : std::true_type {{}};
#endif

template <typename V, typename T>
inline void stream_store(const V& value, T* ptr, int64_t extent, int64_t count = V::size()) {{
  const bool large = extent * static_cast<int64_t>(sizeof(T)) >= {MIN_STREAM_BYTES}L;
  if constexpr (Streamable<V, T>::value) {{
    using Vector = at::vec::Vectorized<T>;
    if (large && count == V::size() && reinterpret_cast<uintptr_t>(ptr) % sizeof(Vector) == 0) {{
      if constexpr (std::is_same_v<V, Vector>) {{
        stream_vector(value, ptr);
      }} else {{
        for (int i = 0; i < V::size() / Vector::size(); ++i) {{
          stream_vector(value[i], ptr + i * Vector::size());
        }}
      }}
      return;
    }}
  }}
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(ptr + {PREFETCH_BYTES} / sizeof(T), 1, 3);
#endif
  value.store(ptr, count);
}}

inline void stream_fence() {{
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}}
}}  // namespace fastoptim
"""
_LOOP = re.compile(r"^(\s*)for\(int64_t (x\d+)=[^;]*; \2<(.+); \2\+=")
_STORE = re.compile(rf"^(\s*)(tmp\d+)\.store\(({POINTER}) \+ (.+)\);$")
_DECLARATION = re.compile(rf"\*\s*({POINTER})\s*[,)]")


def _loops(lines: list[str]) -> list[tuple[int, int, str]]:
    """Every loop as ``(first line, closing line, extent)``: its bound as the source writes it.

    In inductor's layout, with the braces of a loop's block on lines of their own.
    """
    loops = []
    for index, line in enumerate(lines):
        match = _LOOP.match(line)
        if match is None or index + 1 >= len(lines) or lines[index + 1].strip() != "{":
            continue
        end = closing_brace(lines, index + 1)
        if end is not None:
            loops.append((index, end, match.group(3)))
    return loops


def _write_only(code: str, pointer: str) -> bool:
    """Whether ``pointer`` appears only in its kernel's signature and as the target of stores."""
    uses = len(re.findall(rf"\b{pointer}\b", code))
    stores = len(re.findall(rf"\.store\({pointer}\b", code))
    declarations = sum(1 for name in _DECLARATION.findall(code) if name == pointer)
    return uses == stores + declarations


def _arguments(text: str) -> list[str] | None:
    """``text`` split at its commas outside parentheses; None where its parentheses do not match."""
    arguments, depth, start = [], 0, 0
    for index, character in enumerate(text):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if depth < 0:
            return None
        if character == "," and depth == 0:
            arguments.append(text[start:index].strip())
            start = index + 1
    arguments.append(text[start:].strip())
    return arguments if depth == 0 else None


def _around(loops: list[tuple[int, int, str]], index: int) -> list[tuple[int, int, str]]:
    """The loops around line ``index``, outermost first."""
    return sorted((loop for loop in loops if loop[0] < index < loop[1]), key=lambda loop: loop[0])


def with_streamed_stores(code: str) -> str:
    """A kernel's source with its stores to write-only memory streamed (see the module's docstring)."""
    if ".store(" not in code or code.count(PREFIX_INCLUDE) != 1:
        return code
    lines = code.split("\n")
    loops = _loops(lines)
    stores: dict[str, list[int]] = {}
    for index, line in enumerate(lines):
        if match := re.search(rf"\.store\(({POINTER})\b", line):
            stores.setdefault(match.group(1), []).append(index)
    rewritten: dict[int, str] = {}
    fences: set[int] = set()
    for pointer, indices in stores.items():
        nests = [_around(loops, index) for index in indices]
        if not all(nests) or len({nest[-1] for nest in nests}) != 1 or not _write_only(code, pointer):
            continue
        outermost, innermost = nests[0][0], nests[0][-1]
        if lines[outermost[0] - 1].strip().startswith("#pragma omp parallel"):
            continue  # the threads of a combined directive end with it: no place for their fence
        for index in indices:
            match = _STORE.match(lines[index])
            arguments = None if match is None else _arguments(match.group(4))
            if arguments is not None and len(arguments) <= 2:
                spaces, value = match.group(1), match.group(2)
                rest = "".join(f", {argument}" for argument in (innermost[2], *arguments[1:]))
                rewritten[index] = (
                    f"{spaces}fastoptim::stream_store({value}, {pointer} + {arguments[0]}{rest});"
                )
                fences.add(outermost[1])
    if not rewritten:
        return code
    for index, line in rewritten.items():
        lines[index] = line
    for end in sorted(fences, reverse=True):
        lines.insert(end + 1, f"{indent(lines[end])}fastoptim::stream_fence();")
    return with_helpers("\n".join(lines), HELPER_SOURCE)


def streamed_stores() -> contextlib.AbstractContextManager[None]:
    """Inductor's CPU kernels stream their stores to memory they never read."""
    return rewritten_kernels(with_streamed_stores, enabled=_CAN_PATCH)
