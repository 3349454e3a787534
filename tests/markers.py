"""Markers for tests that need a part of fastoptim that can be switched off."""

import pytest

from fastoptim.runners.compiled import cpu_codegen

#: Tests of the compiled runner's CPU plugin: they run wherever it is enabled (every torch in
#: ``cpu_codegen.TESTED_TORCH``, which CI installs), and say why they do not elsewhere.
needs_cpu_codegen = pytest.mark.skipif(
    not cpu_codegen.ENABLED,
    reason=f"the compiled runner's CPU plugin is off (torch {cpu_codegen.torch_release()} not in "
    f"{cpu_codegen.TESTED_TORCH}, or {cpu_codegen.SWITCH}=0): these tests are about that plugin",
)
