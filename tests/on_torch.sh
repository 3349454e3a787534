#!/usr/bin/env bash
# The compiled-backend, checkpoint and reference tests, and the distributed ones that lean on
# DTensor and DCP, on another torch release, in a venv of its own (.venv-torch-VERSION, reused
# when present). CI runs it on every release in
# fastoptim.runners.compiled.cpu_codegen.TESTED_TORCH but the one the main suite installs.
#   usage: bash tests/on_torch.sh 2.14.1
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1
venv=".venv-torch-$version"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "torch==$version"
"$venv/bin/pip" install -q -e ".[test]"
"$venv/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$version', torch.__version__"
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_compiled.py tests/test_compiled_chunks.py tests/test_update_scratch.py \
    tests/test_streaming_stores.py tests/test_loop_invariants.py tests/test_partial_sums.py \
    tests/test_checkpoint.py tests/test_references.py tests/test_distributed_errors.py \
    tests/test_distributed.py::test_two_ranks_equal_one_process \
    tests/test_distributed.py::test_distributed_checkpoint_resumes_exactly
