"""Parameters that share one step's scalars, dtype and device, ready for a runner."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor


@dataclass
class Bucket:
    """Parameters of one group with the same step count, device and dtype.

    Attributes:
        params: The parameters.
        grads: Their gradients.
        states: One list per state key (in ``state_keys`` order), aligned with ``params``.
        kahan_comps: Kahan compensation buffers aligned with ``params``, or None when the
            bucket is not Kahan-summed.
        scalars: The step's scalars, shared by every parameter of the bucket.
        sparse: Whether the gradients are sparse (such buckets always run on the loop runner).
        prepared: What a runner prepared from the tensors, kept for the step's second phase
            (reducing algorithms run a bucket twice in one step).
    """

    device: torch.device
    dtype: torch.dtype
    scalars: SimpleNamespace
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    states: list[list[Tensor]] = field(default_factory=list)
    kahan_comps: list[Tensor] | None = None
    sparse: bool = False
    prepared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.params)

    def tensors(self) -> Iterator[tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor | None]]:
        """Per parameter: ``(param, grad, states, kahan_comp or None)``, what a runner applies."""
        rows = zip(*self.states, strict=True) if self.states else [()] * len(self)
        comps = self.kahan_comps or [None] * len(self)
        return zip(self.params, self.grads, rows, comps, strict=True)
