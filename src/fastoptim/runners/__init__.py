"""Execution paths for an algorithm's rule, and the choice among them.

``backend="auto"`` picks per device: on CPU the per-tensor loop (eager ``torch._foreach_*`` kernels
are slower there: 53 ms against 27 ms for a 20M-parameter Adam step, see
``benchmarks/RESULTS.md``), on accelerators the foreach runner (fewer kernel launches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled import run_compiled
from fastoptim.runners.foreach import run_foreach
from fastoptim.runners.loop import run_loop

Runner = Callable[..., list[Any]]

RUNNERS: dict[str, Runner] = {"loop": run_loop, "foreach": run_foreach, "compiled": run_compiled}
#: Backends named in the API that later releases add; selecting one now is a clear error.
PLANNED_BACKENDS = ("triton",)
BACKENDS = ("auto", *RUNNERS)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Returns the concrete runner name for ``backend`` on ``device``."""
    if backend != "auto":
        return backend
    return "loop" if device.type == "cpu" else "foreach"


def get_runner(backend: str, device: torch.device) -> Runner:
    """Returns the runner function for ``backend`` on ``device``."""
    return RUNNERS[resolve_backend(backend, device)]


__all__ = ["BACKENDS", "PLANNED_BACKENDS", "RUNNERS", "Bucket", "get_runner", "resolve_backend"]
