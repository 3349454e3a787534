"""The compiled runner's CPU plugin: inductor's CPU code generation, patched, on tested torch only.

Everything here reaches into torch's private internals (inductor's scheduler, the C++ it
generates, ``make_fx`` and ``standalone_compile``), so it is enabled only on the torch releases
in :data:`TESTED_TORCH`, which CI runs the whole compiled-backend suite on. On any other torch
(or with ``FASTOPTIM_CPU_CODEGEN=0``) the core runner compiles every chunk with
``torch.compile`` and nothing else, with one warning: the same results, more slowly.

What it adds on the CPU, each measured with a same-process A/B and listed on the docs'
backends page:

* :mod:`.direct`: chunks traced with ``make_fx`` and compiled with ``standalone_compile``, called
  without dynamo's guards and wrappers;
* :mod:`.fusion`: a reduction and the update that follows it in one loop (D-Adaptation, Prodigy,
  AdamP's per-channel sums), and the graph passes :mod:`.round_trips` and
  :mod:`.early_write_back`;
* :mod:`.update_scratch`: AdamP's update kept in a cache-resident buffer between its two passes;
* :mod:`.low_precision_codegen`, :mod:`.loop_invariants`, :mod:`.streaming_stores`: rewrites of
  the generated C++ (vector width for bf16/fp16, scalar work hoisted out of loops, non-temporal
  stores).
"""

from __future__ import annotations

import os
import warnings

import torch

from fastoptim.runners.compiled.plugins import Plugin, register

#: Torch releases this plugin is enabled on: those CI tests it on.
TESTED_TORCH = ("2.13.0", "2.14.1")
#: Set to ``0`` to run the core compiled runner alone.
SWITCH = "FASTOPTIM_CPU_CODEGEN"


def torch_release() -> str:
    """This torch's release, without a local build tag (``2.13.0+cpu`` -> ``2.13.0``)."""
    return torch.__version__.split("+")[0]


def _on_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


def plugin() -> Plugin:
    """The plugin's hooks (imports inductor's internals)."""
    from fastoptim.runners.compiled.cpu_codegen.direct import DirectStep
    from fastoptim.runners.compiled.cpu_codegen.fusion import CACHE_KEY, inductor_patches
    from fastoptim.runners.compiled.cpu_codegen.update_scratch import forget_scratch, with_scratch

    return Plugin(
        name="cpu_codegen",
        applies=_on_cpu,
        options={"post_grad_custom_post_pass": CACHE_KEY},
        patches=inductor_patches,
        direct_step=DirectStep,
        rows_alone=with_scratch,
        forget=forget_scratch,
    )


def enable() -> bool:
    """Registers the plugin where this torch is tested and the switch allows; says why not once."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    if torch_release() not in TESTED_TORCH:
        warnings.warn(
            f"fastoptim: the compiled backend's CPU code generation is tested on torch {TESTED_TORCH}, "
            f"not {torch.__version__}; compiling with torch.compile alone (same results, slower on CPU)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    register(plugin())
    return True


ENABLED = enable()
