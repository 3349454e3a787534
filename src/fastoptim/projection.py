"""AdamP's projection: removing the radial part of an update to a scale-invariant weight.

Heo et al. (ICLR 2021): for weights followed by normalisation, the update's component along the
weight only grows the norm and shrinks the effective step. If the gradient is nearly orthogonal
to the weight (cosine below ``delta / sqrt(dim)``), first per output channel, else for the whole
tensor, the update is projected onto the tangent space and weight decay is scaled by ``wd_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional


def _channel_view(x: Tensor) -> Tensor:
    return x.reshape(x.size(0), -1)


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
    if param.ndim <= 1:
        return update, 1.0
    if param.dtype != grad.dtype:
        param = param.to(grad.dtype)
    rows = _channel_view(param).size(1)
    g, p = _channel_view(grad), _channel_view(param)
    dot = torch.einsum("ij,ij->i", g, p)
    grad_norm = torch.linalg.vector_norm(g, dim=1)
    param_norm = torch.linalg.vector_norm(p, dim=1)
    channel = dot.abs() / (grad_norm.clamp_min(eps) * param_norm.clamp_min(eps))
    layer_grad_norm = grad_norm.square().sum().sqrt().clamp_min(eps)
    layer = dot.sum().abs() / (layer_grad_norm * param_norm.square().sum().sqrt().clamp_min(eps))
    channel_max, layer_cos = torch.stack((channel.max(), layer)).tolist()
    for view, cheap, size in ((_channel_view, channel_max, rows), (_layer_view, layer_cos, param.numel())):
        threshold = delta / math.sqrt(size)
        if _decide(cheap, threshold, lambda view=view: _cosine(view(grad), view(param), eps)):
            expand = [-1] + [1] * (param.ndim - 1)
            unit = param / view(param).norm(dim=1).view(expand).add_(eps)
            update -= unit * view(unit * update).sum(dim=1).view(expand)
            return update, wd_ratio
    return update, 1.0


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


__all__ = ["project", "project_each"]
