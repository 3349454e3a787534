"""Shared pieces of the distance-estimating optimizers (D-Adaptation and Prodigy)."""

from __future__ import annotations

from typing import Any

import torch

from fastoptim.optimizer import Optimizer


def max_lr_of(optimizer: Optimizer, hint: str = "") -> float:
    """The largest group lr; every group's lr must be it or 0, as the official code requires.

    Raises:
        RuntimeError: A group's lr is neither the largest nor 0 (with the official message).
    """
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    lr = max(lrs)
    if any(value not in (lr, 0.0) for value in lrs):
        raise RuntimeError(
            "Setting different lr values in different parameter groups is only supported for values of 0"
            + hint
        )
    return lr


def scaled(value: Any, factor: float) -> Any:
    """``factor * value`` in float64 (0-d tensor, or a list of them), as the official host sums."""
    if isinstance(value, list):
        return [v.to(torch.float64) * factor for v in value]
    return value.to(torch.float64) * factor
