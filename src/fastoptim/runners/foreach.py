"""The multi-tensor runner: ``torch._foreach_*`` kernels over chunks of a bucket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.ops import ForeachOps
from fastoptim.runners.runner import Runner

#: Elements per chunk: bounds the temporaries a rule allocates (a few chunk-sized lists).
CHUNK_ELEMENTS = 1 << 24


def _chunks(bucket: Bucket) -> Iterator[slice]:
    start, size = 0, 0
    for i, param in enumerate(bucket.params):
        size += param.numel()
        if size >= CHUNK_ELEMENTS:
            yield slice(start, i + 1)
            start, size = i + 1, 0
    if start < len(bucket.params):
        yield slice(start, len(bucket.params))


def run_foreach(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` (by default the optimizer's rule) to ``bucket`` chunk by chunk.

    Each primitive is one multi-tensor kernel per chunk.

    Returns:
        What ``apply`` returned, per chunk (lists of per-tensor partial sums in a reduction phase).
    """
    results = []
    for part in _chunks(bucket):
        states = tuple(column[part] for column in bucket.states)
        comps = None if bucket.kahan_comps is None else bucket.kahan_comps[part]
        params, grads = bucket.params[part], bucket.grads[part]
        results.append(
            apply(optimizer, ForeachOps, params, grads, states, comps, bucket.scalars, update_params)
        )
    return results


RUNNER = Runner("foreach", run_foreach)
