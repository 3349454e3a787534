"""The interface every backend implements, and nothing more.

A runner applies one phase of an algorithm (``apply``: the rule with every cross-cutting
feature, from :mod:`~fastoptim.runners.apply`) to a :class:`~fastoptim.runners.bucket.Bucket`
of parameters that share a device, dtype and step. The base class calls only this interface;
what a runner keeps between steps (compiled chunks, aliases, scratch buffers) is its own
business, dropped through :attr:`Runner.forget`.

A reduction phase hands back, per tensor (or per list of tensors), a tuple of 0-d partial sums,
or per group of rows one :class:`~fastoptim.reduction.StackedPartials`;
:func:`fastoptim.reduction.sum_partials` adds them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastoptim.runners.apply import Apply
from fastoptim.runners.bucket import Bucket

#: ``run(optimizer, bucket, update_params, apply) -> results``.
RunBucket = Callable[[Any, Bucket, bool, Apply], list[Any]]


def _everywhere(device: torch.device) -> bool:
    return True


def _keeps_nothing(optimizer: Any) -> None:
    return None


@dataclass(frozen=True)
class Runner:
    """A backend.

    Attributes:
        name: The ``backend=`` value that selects it.
        run: Applies ``apply`` to every tensor of a bucket; returns what ``apply`` returned,
            per tensor or per group of tensors (partial sums in a reduction phase).
        supports: Whether it runs on a device.
        forget: Drops whatever it keeps of an optimizer's tensors (after ``load_state_dict``).
        sparse: Whether it takes sparse gradients (those buckets go to the loop runner otherwise).
    """

    name: str
    run: RunBucket
    supports: Callable[[torch.device], bool] = _everywhere
    forget: Callable[[Any], None] = _keeps_nothing
    sparse: bool = False
