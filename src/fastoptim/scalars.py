"""Scalars that may be Python floats (eager runners) or 0-d tensors (the compiled runner)."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def is_set(value: Any) -> bool:
    """Whether a scalar is nonzero, decided without reading a tensor.

    The compiled runner passes only nonzero floats as tensors (zeros stay Python floats), so a
    branch on ``is_set(s.decay)`` is static under ``torch.compile`` and a plain truth test on
    the eager paths.
    """
    return isinstance(value, Tensor) or bool(value)
