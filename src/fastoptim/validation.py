"""Argument checks that name the argument and the allowed range."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a one-element tensor, got shape {tuple(value.shape)}"
            )
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_nonnegative(value: Any, name: str) -> float:
    """Checks ``0 <= value < inf``; returns the value as a float."""
    number = _as_float(value, name)
    if not (0.0 <= number < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {number}")
    return number


def check_positive(value: Any, name: str) -> float:
    """Checks ``0 < value < inf``; returns the value as a float."""
    number = _as_float(value, name)
    if not (0.0 < number < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {number}")
    return number


def check_unit_interval(value: Any, name: str) -> float:
    """Checks ``0 <= value < 1``; returns the value as a float."""
    number = _as_float(value, name)
    if not (0.0 <= number < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {number}")
    return number


def check_betas(betas: Any, count: int, name: str = "betas") -> None:
    """Checks a tuple of ``count`` coefficients, each in ``[0, 1)``."""
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != count:
        raise ValueError(f"{name} must be a tuple of {count} numbers in [0, 1), got {betas!r}")
    for i, beta in enumerate(betas):
        check_unit_interval(beta, f"{name}[{i}]")


def check_bool(value: Any, name: str, allow_none: bool = False) -> None:
    """Checks that ``value`` is a bool (or None where allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
