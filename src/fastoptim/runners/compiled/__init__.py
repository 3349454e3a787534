"""The compiled backend: ``torch.compile`` of the shared ``apply``, public APIs only.

:mod:`~fastoptim.runners.compiled.runner` is the core; plugins (:mod:`~fastoptim.runners.compiled.plugins`)
may change how chunks on some devices compile, as :mod:`~fastoptim.runners.compiled.cpu_codegen`
does on the CPU.
"""

import torch

from fastoptim.runners.compiled.runner import forget, run_compiled
from fastoptim.runners.runner import Runner


def _supports(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


RUNNER = Runner("compiled", run_compiled, supports=_supports, forget=forget)

__all__ = ["RUNNER", "run_compiled"]
