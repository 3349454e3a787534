"""AdamP's projection: removing the radial part of an update to a scale-invariant weight.

Heo et al. (ICLR 2021): for weights followed by normalisation, the update's component along the
weight only grows the norm and shrinks the effective step. If the gradient is nearly orthogonal
to the weight (cosine below ``delta / sqrt(dim)``), first per output channel, else for the whole
tensor, the update is projected onto the tangent space and weight decay is scaled by ``wd_ratio``.

Sharded weights (FSDP2, ``Shard(0)``: each rank holds whole output channels) are decided for the
whole weight before the step (:func:`sharded_projections`): each rank's per-channel cosines and
its shard's share of the layer sums travel in one all-gather, and the weights whose whole-tensor
projection fires take their ``sum(p_n * u)`` in one all-reduce, from a run of the rule on copies
of their states. During the step :func:`project` applies what was decided.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional


def _channel_view(x: Tensor) -> Tensor:
    return x.reshape(x.size(0), math.prod(x.shape[1:]))


def _layer_view(x: Tensor) -> Tensor:
    return x.reshape(1, -1)


#: Cheap cosines within this relative distance of the threshold are recomputed exactly.
DECISION_MARGIN = 1e-2


def _decide(cheap: float, threshold: float, exact: Callable[[], Tensor]) -> bool:
    """``max |cos| < threshold`` as the official code decides it.

    ``cheap`` comes from fused reductions and differs from torch's ``cosine_similarity`` in the
    last bits; far from the threshold that cannot change the answer, near it the official
    formulation is evaluated.
    """
    if abs(cheap - threshold) > DECISION_MARGIN * threshold:
        return cheap < threshold
    return bool(exact().max() < threshold)


def _cosine(x: Tensor, y: Tensor, eps: float) -> Tensor:
    return functional.cosine_similarity(x, y, dim=1, eps=eps).abs_()


def project(
    param: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, float]:
    """Projects ``update`` in place where ``param`` looks scale-invariant (AdamP/SGDP).

    Decides and projects as adamp 0.3.0 does, channel view first, then layer view. The decision
    costs one pass of row-wise dot products and norms (the layer view's come from the row sums)
    instead of two ``cosine_similarity`` calls; see :func:`_decide` for why it stays exact. The
    projection itself follows the official operations; ``reshape`` replaces ``view`` so that
    channels_last weights work (the official code raises on them).

    Args:
        param: The weight (read only; any float dtype, computed in ``grad``'s dtype).
        grad: Its gradient.
        update: The step direction, modified in place when the projection fires.
        delta: Cosine threshold ``delta / sqrt(dim)`` below which the projection fires.
        wd_ratio: Weight-decay multiplier returned when it fires.
        eps: Guards the norms.

    Returns:
        The update and the weight-decay multiplier (``wd_ratio`` if projected, else 1).
    """
    if param.ndim <= 1 or param.numel() == 0:  # a weight of no elements has no direction
        return update, 1.0
    decided = _DECIDED.get()
    if decided is not None and id(param) in decided:
        return _apply(decided[id(param)], param.to(grad.dtype), update, wd_ratio, eps)
    if param.dtype != grad.dtype:
        param = param.to(grad.dtype)
    columns = _channel_view(param).size(1)
    dot, grad_norm, param_norm, channel = _channel_sums(param, grad, eps)
    layer_grad_norm = grad_norm.square().sum().sqrt().clamp_min(eps)
    layer = dot.sum().abs() / (layer_grad_norm * param_norm.square().sum().sqrt().clamp_min(eps))
    channel_max, layer_cos = torch.stack((channel.max(), layer)).tolist()
    for view, cheap, size in ((_channel_view, channel_max, columns), (_layer_view, layer_cos, param.numel())):
        threshold = delta / math.sqrt(size)
        if _decide(cheap, threshold, lambda view=view: _cosine(view(grad), view(param), eps)):
            return _project_along(param, update, view, eps), wd_ratio
    return update, 1.0


def _channel_sums(param: Tensor, grad: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per output channel: ``g . p``, ``|g|``, ``|p|`` and ``|cos(g, p)|`` (norms guarded by ``eps``)."""
    g, p = _channel_view(grad), _channel_view(param.to(grad.dtype))
    dot = torch.einsum("ij,ij->i", g, p)
    grad_norm = torch.linalg.vector_norm(g, dim=1)
    param_norm = torch.linalg.vector_norm(p, dim=1)
    return dot, grad_norm, param_norm, dot.abs() / (grad_norm.clamp_min(eps) * param_norm.clamp_min(eps))


def _project_along(param: Tensor, update: Tensor, view: Callable[[Tensor], Tensor], eps: float) -> Tensor:
    """Removes from ``update`` its component along each row of ``view(param)`` (in place)."""
    expand = [-1] + [1] * (param.ndim - 1)
    unit = param / view(param).norm(dim=1).view(expand).add_(eps)
    update -= unit * view(unit * update).sum(dim=1).view(expand)
    return update


def project_each(
    params: list[Tensor],
    grads: list[Tensor],
    updates: list[Tensor],
    delta: float,
    wd_ratio: float,
    eps: float,
) -> tuple[list[Tensor], list[float]]:
    """:func:`project` over lists (the foreach runner): the updates and one multiplier each."""
    ratios = []
    for param, grad, update in zip(params, grads, updates, strict=True):
        ratios.append(project(param, grad, update, delta, wd_ratio, eps)[1])
    return updates, ratios


@dataclass
class Decided:
    """The projection all ranks agreed on for one sharded weight.

    Attributes:
        view: ``"channel"``, ``"layer"``, or None (not projected).
        norm: For the layer view: the whole weight's norm.
        coefficient: For the layer view: ``sum(p_n * u)`` over the whole weight, where
            ``p_n = p / (norm + eps)``; None while it is being measured.
        measured: While measuring: this shard's part of ``coefficient``.
    """

    view: str | None
    norm: float = 0.0
    coefficient: float | None = None
    measured: Tensor | None = None


#: During a step over sharded weights: the id of each weight's local shard -> its decision.
_DECIDED: ContextVar[dict[int, Decided] | None] = ContextVar("fastoptim_sharded_projection", default=None)


def deciding() -> bool:
    """Whether a step over sharded weights is running (their decisions made beforehand)."""
    return _DECIDED.get() is not None


def _apply(
    decided: Decided, param: Tensor, update: Tensor, wd_ratio: float, eps: float
) -> tuple[Tensor, float]:
    if decided.view is None:
        return update, 1.0
    if decided.view == "channel":
        return _project_along(param, update, _channel_view, eps), wd_ratio
    unit = param / (decided.norm + eps)
    if decided.coefficient is None:
        decided.measured = (unit * update).sum()
        return update, 1.0
    update -= unit * decided.coefficient
    return update, wd_ratio


def _shard_statistics(param: Tensor, grad: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """This shard's largest channel cosine, and its ``[sum g.p, sum g^2, sum p^2, rows]``."""
    dot, grad_norm, param_norm, channel = _channel_sums(param, grad, eps)
    largest = channel.max() if channel.numel() else channel.new_zeros(())
    rows = torch.tensor(float(param.size(0)), dtype=torch.float64, device=grad.device)
    sums = torch.stack((dot.sum(), grad_norm.square().sum(), param_norm.square().sum())).to(torch.float64)
    return largest.to(torch.float64), torch.cat((sums, rows.view(1)))


def _decide_sharded(largest: float, sums: list[float], columns: int, s: Any) -> Decided:
    """Adamp's decision (channel view first, then layer view) from the whole weight's statistics."""
    dot, grad_square, param_square, rows = sums
    if rows == 0 or columns == 0:  # a weight of no elements
        return Decided(None)
    if largest < s.delta / math.sqrt(columns):
        return Decided("channel")
    param_norm = math.sqrt(param_square)
    layer = abs(dot) / (max(math.sqrt(grad_square), s.eps) * max(param_norm, s.eps))
    if layer < s.delta / math.sqrt(rows * columns):
        return Decided("layer", norm=param_norm)
    return Decided(None)


def check_sharded_weights(group: dict[str, Any]) -> None:
    """Refuses weights sharded along another dimension than their output channels.

    Their per-channel sums would be split over ranks (each would need an all-reduce of its own).
    """
    from fastoptim.distributed import is_dtensor

    for index, param in enumerate(group["params"]):
        if is_dtensor(param) and param.ndim > 1:
            dims = {placement.dim for placement in param.placements if placement.is_shard()}
            if dims - {0}:
                raise ValueError(
                    f"params: weight {index} of shape {tuple(param.shape)} is sharded along dimension(s) "
                    f"{sorted(dims)}; the projection needs whole output channels on each rank "
                    "(Shard(0), FSDP2's default)"
                )


@contextlib.contextmanager
def sharded_projections(optimizer: Any, plans: list[Any]) -> Iterator[None]:
    """Decides the projection of every sharded weight of the step, for :func:`project` to apply.

    One all-gather of each rank's statistics; one all-reduce more when a weight's layer view
    fires (its ``sum(p_n * u)``, from the rule run on copies of its states). A no-op unless the
    optimizer's parameters are DTensors sharded over its ranks.
    """
    sharding = optimizer.sharding
    if sharding is None or not optimizer.has_dtensors:
        yield
        return
    from fastoptim.runners.apply import apply_rule
    from fastoptim.runners.ops import TensorOps, Workspace

    weights = [
        (bucket, param, grad, states)
        for _, buckets in plans
        for bucket in buckets
        for param, grad, states, _ in bucket.tensors()
        if param.ndim > 1
    ]
    if not weights:
        yield
        return
    statistics = [_shard_statistics(param, grad, bucket.scalars.eps) for bucket, param, grad, _ in weights]
    largest, sums = sharding.max_and_sum(
        torch.stack([item[0] for item in statistics]), torch.stack([item[1] for item in statistics])
    )
    decided: dict[int, Decided] = {}
    for (bucket, param, _, _), top, row in zip(weights, largest.tolist(), sums.tolist(), strict=True):
        decided[id(param)] = _decide_sharded(top, row, math.prod(param.shape[1:]), bucket.scalars)
    layered = [weight for weight in weights if decided[id(weight[1])].view == "layer"]
    token = _DECIDED.set(decided)
    try:
        if layered:
            ops = TensorOps(Workspace())
            for bucket, param, grad, states in layered:
                copies = tuple(state.clone() for state in states)
                apply_rule(optimizer, ops, param, grad, copies, None, bucket.scalars, False)
            measured = torch.stack(
                [decided[id(param)].measured.to(torch.float64) for _, param, _, _ in layered]
            )
            for (_, param, _, _), total in zip(
                layered, sharding.sum(measured, torch.float64).tolist(), strict=True
            ):
                decided[id(param)].coefficient = total
        yield
    finally:
        _DECIDED.reset(token)


__all__ = ["check_sharded_weights", "project", "project_each", "sharded_projections"]
