"""The per-tensor runner: the reference path, and the fastest eager path on CPU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.ops import TensorOps, Workspace
from fastoptim.runners.probe import rule_traits
from fastoptim.runners.runner import Runner

#: Contiguous tensors larger than this are updated in blocks of this many elements, which bounds
#: the workspace (a few blocks) whatever the size of the largest parameter.
BLOCK_ELEMENTS = 1 << 20


def _blockable(tensors: tuple[Tensor | None, ...], numel: int) -> bool:
    """Large, dense, contiguous, and every state shaped like the parameter (not Prodigy's slices)."""
    return numel > BLOCK_ELEMENTS and all(
        t is None or (t.layout == torch.strided and t.is_contiguous() and t.numel() == numel) for t in tensors
    )


def _whole_tensors(optimizer: Any, apply: Apply, row: tuple[Any, ...], scalars: Any) -> bool:
    """Whether the rule needs each tensor whole (AdamP's and SGDP's projection): no blocks then."""
    return rule_traits(optimizer, apply, row, scalars, TensorOps(Workspace())).channels


def run_loop(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` (by default the optimizer's rule) to each tensor of ``bucket`` in turn.

    Returns:
        What ``apply`` returned, per tensor or block (partial sums in a reduction phase).
    """
    workspace = optimizer.workspace
    ops = TensorOps(workspace)
    scalars = bucket.scalars
    results = []
    for param, grad, states, comp in bucket.tensors():
        numel = param.numel()
        whole = not _blockable((param, grad, *states, comp), numel)
        if whole or _whole_tensors(optimizer, apply, (param, grad, states, comp), scalars):
            results.append(apply(optimizer, ops, param, grad, states, comp, scalars, update_params))
            workspace.reset()
            continue
        flat = [None if t is None else t.view(-1) for t in (param, grad, *states, comp)]
        for start in range(0, numel, BLOCK_ELEMENTS):
            p, g, *s, c = (None if t is None else t[start : start + BLOCK_ELEMENTS] for t in flat)
            results.append(apply(optimizer, ops, p, g, tuple(s), c, scalars, update_params))
            workspace.reset()
    return results


RUNNER = Runner("loop", run_loop, sparse=True)
