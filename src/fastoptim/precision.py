"""Writing an update into a parameter: plainly, Kahan-compensated or stochastically rounded.

Runners compute in float32 for low-precision parameters and call :func:`store` once per parameter
(or list of parameters) with the algorithm's update. Decoupled weight decay goes through the same
write, so it is compensated too: a bf16 weight decayed by ``lr * wd = 1e-5`` per step keeps
decaying, where a plain bf16 ``p *= 1 - lr * wd`` rounds back to ``p`` every step.

Kahan summation keeps the part of each update that the parameter's dtype could not represent in
a compensation buffer ``c`` (same dtype as the parameter) and adds it back at the next step::

    y  = c + Δ            # Δ: this step's update, including decoupled decay
    p' = round(p + y)
    c  = y - (p' - p)     # what rounding dropped
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastoptim.scalars import is_set

LOW_PRECISION = (torch.bfloat16, torch.float16)


def is_low_precision(dtype: torch.dtype) -> bool:
    """Whether parameters of ``dtype`` are computed in float32 and may use Kahan summation."""
    return dtype in LOW_PRECISION


def store(
    ops: Any, param: Any, kahan_comp: Any | None, step_into: Callable[[Any], Any], scalars: Any
) -> None:
    """Applies ``p ← (1 - decay_rate) · p + Δ`` where ``step_into(t)`` returns ``t + Δ``.

    Args:
        ops: The runner's primitives (:class:`~fastoptim.runners.ops.TensorOps` or
            :class:`~fastoptim.runners.ops.ForeachOps`).
        param: The parameter (or list of parameters) to write.
        kahan_comp: The compensation buffer(s), or None for a plain write; with stochastic
            rounding, the parameters' stream numbers (:mod:`fastoptim.stochastic_rounding`).
        step_into: Adds the algorithm's update to its argument and returns the result; may work
            in place on its argument.
        scalars: The step's scalars: ``decay_rate`` (decoupled decay already scaled by the
            learning rate), ``low_precision`` (bf16/fp16: the update is formed in float32) and,
            with ``stochastic`` rounding, the step's ``rounding_seed``.
    """
    decay_rate = scalars.decay_rate
    if scalars.stochastic:  # bf16 written as one of its two neighbours, unbiased (no buffer)
        target = ops.to_fp32(param)
        if is_set(decay_rate):
            target = ops.mul_(target, 1.0 - decay_rate)
        ops.copy_(param, ops.stochastic_round(step_into(target), scalars.rounding_seed, kahan_comp))
        return
    if kahan_comp is not None:
        # In float32: y = c + Δ - rate·p;  s = p + y;  p' = round(s);  c' = s - p'.
        comp = ops.to_fp32(kahan_comp)
        if is_set(decay_rate):
            comp = ops.add_(comp, param, alpha=-decay_rate)
        comp = ops.add_(step_into(comp), param)
        ops.copy_(param, comp)
        ops.copy_(kahan_comp, ops.sub_(comp, param))
        return
    target = ops.to_fp32(param) if scalars.low_precision else param
    if is_set(decay_rate):
        target = ops.mul_(target, 1.0 - decay_rate)
    result = step_into(target)
    if result is not param:
        ops.copy_(param, result)
