"""The per-tensor runner: the reference path, and the fastest eager path on CPU."""

from __future__ import annotations

from typing import Any

from fastoptim.runners.apply import apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.ops import TensorOps


def run_loop(optimizer: Any, bucket: Bucket, update_params: bool) -> None:
    """Applies the optimizer's rule to each tensor of ``bucket`` in turn."""
    comps = bucket.kahan_comps
    for i, param in enumerate(bucket.params):
        states = tuple(column[i] for column in bucket.states)
        comp = None if comps is None else comps[i]
        apply_rule(optimizer, TensorOps, param, bucket.grads[i], states, comp, bucket.scalars, update_params)
