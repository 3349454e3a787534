"""The one place where an algorithm's rule meets the cross-cutting features.

:func:`apply_rule` is shared by every eager runner: it upcasts low-precision gradients and states to float32,
adds L2 weight decay to the gradient, calls the algorithm's rule, writes the new states back and
hands the update to :func:`~fastoptim.precision.store` (plain or Kahan, with decoupled decay).
The loop runner calls it per tensor with :class:`~fastoptim.runners.ops.TensorOps`, the foreach
runner per list with :class:`~fastoptim.runners.ops.ForeachOps`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from fastoptim.precision import store
from fastoptim.scalars import is_set

#: ``apply(optimizer, ops, param, grad, states, kahan_comp, scalars, update_params)``.
Apply = Callable[..., Any]


def _working_states(ops: Any, states: tuple[Any, ...], scalars: SimpleNamespace) -> tuple[Any, ...]:
    """The states the rule reads: float32 copies of low-precision buffers, the buffers otherwise."""
    return tuple(ops.to_fp32(s) for s in states) if scalars.low_precision else states


def _prepared_grad(ops: Any, param: Any, grad: Any, scalars: SimpleNamespace, update_params: bool) -> Any:
    """The gradient the rule reads: float32 for low precision, negated to maximize, plus L2 decay.

    As torch.optim: the sign first, then the decay (only when parameters move).
    """
    if scalars.low_precision:
        grad = ops.to_fp32(grad)
    if scalars.maximize:
        grad = ops.neg(grad)
    if update_params and is_set(scalars.l2):
        grad = ops.add(grad, param, alpha=scalars.l2)
    return grad


def _write_back(ops: Any, states: tuple[Any, ...], new_states: tuple[Any, ...]) -> None:
    for buffer, value in zip(states, new_states, strict=True):
        if value is not buffer:
            ops.copy_(buffer, value)


def apply_rule(
    optimizer: Any,
    ops: Any,
    param: Any,
    grad: Any,
    states: tuple[Any, ...],
    kahan_comp: Any | None,
    scalars: SimpleNamespace,
    update_params: bool,
) -> None:
    """Runs one update of ``optimizer``'s rule on a tensor or a list of tensors.

    Low-precision gradients and states are copied to float32 for the rule; the parameter is
    passed as it is (read-only), and torch's type promotion keeps mixed float32/bf16 arithmetic
    in float32.

    Args:
        optimizer: The optimizer whose ``rule`` is applied.
        ops: Primitives matching the kind of ``param`` (tensor or list).
        param: Parameter(s), updated in place unless ``update_params`` is False.
        grad: Gradient(s); never modified.
        states: State buffers in the order of the optimizer's ``state_keys``; updated in place.
        kahan_comp: Kahan compensation buffer(s) or None.
        scalars: Per-step scalars: the algorithm's own plus ``lr``, ``l2``, ``decay_rate`` and
            ``low_precision``.
        update_params: False during optimizer accumulation: states advance, parameters and
            weight decay do not.
    """
    grad = _prepared_grad(ops, param, grad, scalars, update_params)
    step_into, new_states = optimizer.rule(ops, param, grad, _working_states(ops, states, scalars), scalars)
    _write_back(ops, states, new_states)
    if update_params:
        store(ops, param, kahan_comp, step_into, scalars)


def _accumulate(
    optimizer: Any, ops: Any, param: Any, grad: Any, states: tuple[Any, ...], scalars: SimpleNamespace
) -> tuple[tuple[Any, ...] | None, Any]:
    """Phase one on a prepared gradient: writes the states back, returns ``(partials, step_into)``."""
    partials, new_states, step_into = optimizer.accumulate(
        ops, param, grad, _working_states(ops, states, scalars), scalars
    )
    _write_back(ops, states, new_states)
    return partials, step_into


def _update(
    optimizer: Any,
    ops: Any,
    param: Any,
    grad: Any,
    states: tuple[Any, ...],
    kahan_comp: Any | None,
    scalars: SimpleNamespace,
    update_params: bool = True,
) -> None:
    """Phase two on a prepared gradient, reading the states as they were last written back.

    The parameter moves only with ``update_params``; the states advance either way.
    """
    step_into, new_states = optimizer.update(ops, param, grad, _working_states(ops, states, scalars), scalars)
    _write_back(ops, states, new_states)
    if update_params:
        store(ops, param, kahan_comp, step_into, scalars)


def apply_accumulate(
    optimizer: Any,
    ops: Any,
    param: Any,
    grad: Any,
    states: tuple[Any, ...],
    kahan_comp: Any | None,
    scalars: SimpleNamespace,
    update_params: bool,
) -> tuple[Any, ...] | None:
    """Phase one of a reducing algorithm: advances the states, returns the partial sums.

    Algorithms that move the parameters before the reduction (DAdaptLion) return a
    ``step_into`` here, applied at once.
    """
    grad = _prepared_grad(ops, param, grad, scalars, update_params)
    partials, step_into = _accumulate(optimizer, ops, param, grad, states, scalars)
    if step_into is not None and update_params:
        store(ops, param, kahan_comp, step_into, scalars)
    return partials


def apply_one_pass(
    optimizer: Any,
    ops: Any,
    param: Any,
    grad: Any,
    states: tuple[Any, ...],
    kahan_comp: Any | None,
    scalars: SimpleNamespace,
    update_params: bool,
) -> tuple[Any, ...] | None:
    """Both phases of a reducing algorithm at once, for an update that cannot be skipped.

    The same arithmetic as :func:`apply_accumulate` followed by :func:`apply_update`: the
    gradient is prepared once (the parameter has not moved in between), and the update reads the
    states as phase one wrote them back (rounded to the parameter dtype, as phase two would read
    them). Returns the partial sums.
    """
    grad = _prepared_grad(ops, param, grad, scalars, update_params)
    partials, _ = _accumulate(optimizer, ops, param, grad, states, scalars)
    if update_params:
        _update(optimizer, ops, param, grad, states, kahan_comp, scalars)
    return partials


def apply_update(
    optimizer: Any,
    ops: Any,
    param: Any,
    grad: Any,
    states: tuple[Any, ...],
    kahan_comp: Any | None,
    scalars: SimpleNamespace,
    update_params: bool,
) -> None:
    """Phase two of a reducing algorithm: the parameter update with the reduced scalars.

    Without ``update_params`` (optimizer accumulation, a skipped step) it does nothing, unless
    the algorithm's update advances states (:attr:`~fastoptim.Optimizer.UPDATE_ADVANCES_STATE`):
    those then advance and the parameter stays.
    """
    if update_params or optimizer.UPDATE_ADVANCES_STATE:
        grad = _prepared_grad(ops, param, grad, scalars, update_params)
        _update(optimizer, ops, param, grad, states, kahan_comp, scalars, update_params)
