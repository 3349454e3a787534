"""Markers for tests that need a part of fastoptim that can be switched off."""

import os

import pytest

from fastoptim.runners.compiled import cpu_codegen


def _why_off() -> str:
    if os.environ.get(cpu_codegen.SWITCH, "1") == "0":
        return f"{cpu_codegen.SWITCH}=0 switches it off"
    return f"torch {cpu_codegen.torch_release()} is not in {cpu_codegen.TESTED_TORCH}"


#: Tests of the compiled runner's CPU plugin: they run wherever it is enabled (every torch in
#: ``cpu_codegen.TESTED_TORCH``, which CI installs), and say why they do not elsewhere.
needs_cpu_codegen = pytest.mark.skipif(
    not cpu_codegen.ENABLED, reason=f"tests the compiled runner's CPU plugin, which is off: {_why_off()}"
)
