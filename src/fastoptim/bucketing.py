"""A group's step prepared for the runners: state initialised, step counted, parameters bucketed.

Buckets group the parameters of one param group by (step, device, dtype, sparse gradient): the
unit a runner works on, sharing one set of scalars.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastoptim.distributed import local
from fastoptim.precision import is_low_precision
from fastoptim.runners import Bucket

if TYPE_CHECKING:
    from fastoptim.optimizer import Optimizer


def prepare_buckets(
    optimizer: Optimizer, group: dict[str, Any], params: list[Tensor], shared: dict[str, Any]
) -> list[Bucket]:
    """Checks gradients, initialises missing state, counts the step, buckets the parameters.

    Args:
        optimizer: The optimizer stepping.
        group: The param group of ``params``.
        params: Its parameters that have a gradient.
        shared: The step's :meth:`~fastoptim.Optimizer.global_scalars`.
    """
    if optimizer.SPARSE_STATE_KEYS is None and any(p.grad.is_sparse for p in params):
        raise RuntimeError(
            f"{type(optimizer).__name__} does not support sparse gradients; of fastoptim's optimizers, "
            "DAdaptAdaGrad accepts them (as the official one does)"
        )
    lr = float(group["lr"])
    dense_keys = optimizer.state_keys(group)
    rounding = bool(group.get("stochastic_rounding", False))
    kahan_allowed = _kahan_allowed(group)
    own = local if optimizer.has_dtensors else _same  # runners step DTensors' local shards
    if any(p.is_complex() for p in params):  # and complex tensors' real views (as torch.optim)
        own = _real_view(own)
    buckets: dict[tuple[int, torch.device, torch.dtype, bool], Bucket] = {}
    for p in params:
        sparse = p.grad.is_sparse
        keys = (*dense_keys, *optimizer.SPARSE_STATE_KEYS) if sparse else dense_keys
        state = _initialised(optimizer, group, p, keys)
        step = state["step"] = state.get("step", 0) + 1
        bucket = buckets.get((step, p.device, p.dtype, sparse))
        if bucket is None:
            bucket = _new_bucket(optimizer, group, step, lr, p, len(keys), kahan_allowed, rounding, shared)
            buckets[(step, p.device, p.dtype, sparse)] = bucket
        bucket.params.append(own(p))
        bucket.grads.append(own(p.grad))
        for column, key in zip(bucket.states, keys, strict=True):
            column.append(own(state[key]))
        if bucket.scalars.stochastic:  # in the Kahan buffer's place: the parameter's stream number
            bucket.kahan_comps.append(optimizer.rounding.stream(p, _position(optimizer, p)))
        elif bucket.kahan_comps is not None:
            bucket.kahan_comps.append(own(_kahan_buffer(state, p)))
    return list(buckets.values())


def _initialised(
    optimizer: Optimizer, group: dict[str, Any], p: Tensor, keys: tuple[str, ...]
) -> dict[str, Any]:
    """``p``'s state, with every buffer of ``keys`` it lacks created."""
    state = optimizer.state[p]
    for key in keys:
        if key not in state:
            state[key] = optimizer.init_state(group, p, key)
    return state


def _kahan_allowed(group: dict[str, Any]) -> bool:
    """Whether ``group``'s bf16/fp16 parameters keep Kahan buffers (not with stochastic rounding)."""
    return group["kahan_sum"] is not False and not group.get("stochastic_rounding", False)


def _kahan_buffer(state: dict[str, Any], p: Tensor) -> Tensor:
    """``p``'s Kahan buffer, created (zeros) when it has none."""
    if "kahan_comp" not in state:
        state["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state["kahan_comp"]


def creates_state_only(optimizer: Optimizer) -> bool:
    """Whether this step is torch's state-creating step, which must change nothing.

    ``torch.distributed.checkpoint``'s ``get_optimizer_state_dict`` and
    ``set_optimizer_state_dict`` step an optimizer without state once, with zero gradients and every
    lr set to 0, so that its state exists. torch.optim's optimizers count that step; here it only
    creates the state: no step counted, no sum or estimate moved. Recognised by exactly that: no
    state yet, every lr 0, and every trainable parameter's gradient present and zero (on every rank
    that shares the statistics: one all-reduce, on this first step only).
    """
    if optimizer.state or any(float(group["lr"]) != 0.0 for group in optimizer.param_groups):
        return False
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    if any(p.grad is None for p in params):
        return False
    device = params[0].device if params else torch.device("cpu")
    counts = [local(p.grad).count_nonzero().to(device, torch.float64) for p in params]
    nonzero = torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.float64)
    if optimizer.sharding is not None:
        nonzero = optimizer.sharding.sum(nonzero, torch.float64)
    return nonzero.item() == 0  # one read


def create_state(optimizer: Optimizer) -> None:
    """Creates every state buffer (Kahan buffers included), counting no step."""
    for group in optimizer.param_groups:
        keys = optimizer.state_keys(group)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = _initialised(optimizer, group, p, keys)
            state.setdefault("step", 0)
            if is_low_precision(p.dtype) and _kahan_allowed(group):
                _kahan_buffer(state, p)


def _same(tensor: Tensor) -> Tensor:
    return tensor


def _real_view(own: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def real(tensor: Tensor) -> Tensor:
        tensor = own(tensor)
        return torch.view_as_real(tensor) if tensor.is_complex() else tensor

    return real


def _position(optimizer: Optimizer, param: Tensor) -> int:
    """``param``'s position among the optimizer's parameters (kept until the groups change)."""
    positions = optimizer.__dict__.get("_positions")
    if positions is None or id(param) not in positions:
        every = (p for group in optimizer.param_groups for p in group["params"])
        positions = optimizer._positions = {id(p): i for i, p in enumerate(every)}
    return positions[id(param)]


def _new_bucket(
    optimizer: Optimizer,
    group: dict[str, Any],
    step: int,
    lr: float,
    p: Tensor,
    n_states: int,
    kahan_allowed: bool,
    rounding: bool,
    shared: dict[str, Any],
) -> Bucket:
    low_precision = is_low_precision(p.dtype)
    stochastic = rounding and p.dtype == torch.bfloat16
    sparse = p.grad.is_sparse
    l2, decay_rate = optimizer.weight_decay_terms(group, lr)
    if sparse:
        l2 = 0.0
    maximize = bool(group.get("maximize", False))  # (groups saved before it existed lack it)
    scalars = SimpleNamespace(
        lr=lr,
        l2=l2,
        decay_rate=decay_rate,
        low_precision=low_precision,
        maximize=maximize,
        stochastic=stochastic,
        rounding_seed=optimizer.rounding.step_seed(p.device) if stochastic else None,
    )
    scalars.__dict__.update(shared)
    scalars.__dict__.update(optimizer.scalars(group, step, lr))
    return Bucket(
        device=p.device,
        dtype=p.real.dtype if p.is_complex() else p.dtype,  # complex: the real views
        scalars=scalars,
        states=[[] for _ in range(n_states)],
        kahan_comps=[] if low_precision and (kahan_allowed or stochastic) else None,
        sparse=sparse,
    )
