"""The backends, behind one small interface (:class:`~fastoptim.runners.runner.Runner`).

Each backend is one module (or package) that defines ``RUNNER``; this registry names them and
imports a module the first time its backend is used, so that ``import fastoptim`` loads neither
dynamo nor inductor. Plugins listed for a backend (the compiled runner's CPU code generation)
are imported with it and register themselves there.

``backend="auto"`` picks per device: on CPU the per-tensor loop (eager ``torch._foreach_*``
kernels are slower there: 53 ms against 27 ms for a 20M-parameter Adam step, see
``benchmarks/RESULTS.md``), on accelerators the foreach runner (fewer kernel launches). Neither
the compiled nor the Triton backend is picked automatically: the compiled one compiles for
seconds to minutes before its first step, and the Triton one is not released yet.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from fastoptim.runners.bucket import Bucket
from fastoptim.runners.runner import Runner

#: Backend name -> the module that defines its ``RUNNER``.
MODULES: dict[str, str] = {
    "loop": "fastoptim.runners.loop",
    "foreach": "fastoptim.runners.foreach",
    "compiled": "fastoptim.runners.compiled",
}
#: Plugins imported with a backend's module (each registers itself with it).
PLUGINS: dict[str, tuple[str, ...]] = {"compiled": ("fastoptim.runners.compiled.cpu_codegen",)}
#: Backends named in the API that later releases add (``fastoptim.runners.triton``); selecting
#: one now is a clear error.
PLANNED_BACKENDS = ("triton",)
BACKENDS = ("auto", *MODULES)
#: The runners imported so far, by name.
RUNNERS: dict[str, Runner] = {}


def resolve_backend(backend: str, device: torch.device) -> str:
    """Returns the concrete runner name for ``backend`` on ``device``."""
    if backend != "auto":
        return backend
    return "loop" if device.type == "cpu" else "foreach"


def load(name: str) -> Runner:
    """The runner called ``name``, imported (with its plugins) on first use."""
    runner = RUNNERS.get(name)
    if runner is None:
        if name not in MODULES:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        runner = importlib.import_module(MODULES[name]).RUNNER
        for plugin in PLUGINS.get(name, ()):
            importlib.import_module(plugin)
        RUNNERS[name] = runner
    return runner


def get_runner(backend: str, device: torch.device, sparse: bool = False) -> Runner:
    """The runner for ``backend`` on ``device`` (the loop runner for sparse gradients it cannot take).

    Raises:
        ValueError: The backend does not run on ``device``.
    """
    runner = load(resolve_backend(backend, device))
    if sparse and not runner.sparse:
        return load("loop")
    if not runner.supports(device):
        raise ValueError(f"backend={runner.name!r} does not run on {device.type} tensors")
    return runner


def forget(optimizer: Any) -> None:
    """Lets every runner used so far drop what it keeps of ``optimizer``'s tensors."""
    for runner in RUNNERS.values():
        runner.forget(optimizer)


__all__ = [
    "BACKENDS",
    "PLANNED_BACKENDS",
    "RUNNERS",
    "Bucket",
    "Runner",
    "forget",
    "get_runner",
    "load",
    "resolve_backend",
]
