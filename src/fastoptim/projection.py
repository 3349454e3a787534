"""AdamP's projection: removing the radial part of an update to a scale-invariant weight.

Heo et al. (ICLR 2021): for weights followed by normalisation, the update's component along the
weight only grows the norm and shrinks the effective step. If the gradient is nearly orthogonal
to the weight (cosine below ``delta / sqrt(dim)``), first per output channel, else for the whole
tensor, the update is projected onto the tangent space and weight decay is scaled by ``wd_ratio``.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn import functional


def _channel_view(x: Tensor) -> Tensor:
    return x.reshape(x.size(0), -1)


def _layer_view(x: Tensor) -> Tensor:
    return x.reshape(1, -1)


def project(
    param: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float, eps: float
) -> tuple[Tensor, float]:
    """Projects ``update`` in place where ``param`` looks scale-invariant (AdamP/SGDP).

    Follows adamp 0.3.0 operation for operation, with ``reshape`` where it uses ``view`` so that
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
    expand = [-1] + [1] * (param.ndim - 1)
    for view in (_channel_view, _layer_view):
        cosine = functional.cosine_similarity(view(grad), view(param), dim=1, eps=eps).abs_()
        if cosine.max() < delta / math.sqrt(view(param).size(1)):
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
