"""Rewrites of the C++ source of inductor's CPU kernels, for the length of a ``with`` block.

Each rewrite wraps ``KernelGroup.codegen_group`` (which returns a kernel's source) as it is when
:func:`rewritten_kernels` is called, so that rewrites called one inside the other's block all
apply, the innermost last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from fastoptim.runners.compiled.cpu_codegen.attribute_patch import wrapped

try:
    from torch._inductor.codegen import cpp
except ImportError:  # pragma: no cover - a torch without the CPU backend
    cpp = None

#: The name of a kernel's pointer argument (inputs ``const in_ptrN``, outputs ``out_ptrN``,
#: buffers updated in place ``in_out_ptrN``), as a regular expression.
POINTER = r"(?:in_out_ptr|in_ptr|out_ptr)\d+"
#: The line of a kernel's source after which a rewrite puts the C++ helpers it calls.
PREFIX_INCLUDE = "#include <torch/csrc/inductor/cpp_prefix.h>"
#: Whether this torch has the hook (``KernelGroup.codegen_group``).
CAN_REWRITE = cpp is not None and hasattr(getattr(cpp, "KernelGroup", None), "codegen_group")


def rewritten_kernels(
    rewrite: Callable[[str], str], enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """Inside the block, every CPU kernel inductor generates is ``rewrite(source)``.

    Args:
        rewrite: From a kernel's source to the source compiled instead.
        enabled: When False (or where this torch lacks the hook), nothing is rewritten.
    """

    def wrap(codegen_group: Any) -> Any:
        def rewritten(self: Any, *args: Any, **kwargs: Any) -> str:
            return rewrite(codegen_group(self, *args, **kwargs))

        return rewritten

    kernel_group = getattr(cpp, "KernelGroup", None)
    return wrapped(kernel_group, "codegen_group", wrap, enabled=enabled and CAN_REWRITE)


def indent(line: str) -> str:
    """A source line's leading whitespace."""
    return line[: len(line) - len(line.lstrip())]


def closing_brace(lines: list[str], opening: int) -> int | None:
    """The line that closes the block ``lines[opening]`` opens (a ``{`` on a line of its own).

    Inductor writes the ``}`` on a line of its own, indented as the ``{``; None where no such line
    follows.
    """
    try:
        return lines.index(indent(lines[opening]) + "}", opening + 1)
    except ValueError:
        return None


def with_helpers(code: str, helpers: str) -> str:
    """``code`` with the C++ ``helpers`` just after inductor's prefix include (:data:`PREFIX_INCLUDE`)."""
    return code.replace(PREFIX_INCLUDE, PREFIX_INCLUDE + "\n" + helpers, 1)
