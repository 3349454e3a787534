"""What a runner learns about a rule by running it once on meta tensors.

The compiled runner passes tensors flattened, so that one graph serves every shape, and the loop
runner steps huge tensors block by block, unless the rule needs each output channel (AdamP's and
SGDP's projection reads whole rows and the whole weight); and the compiled CPU plugin gives a
scratch buffer to rules that store an update they read twice. Neither is a flag on the
algorithm: both are read off the rule, run once per optimizer class, phase and kind of ops on
meta tensors shaped like a bucket's first row (no memory, no arithmetic), with the runner's ops
recording the primitives the rule calls. A rule that fails there keeps its shapes, which is
always right.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from fastoptim.runners.apply import Apply


@dataclass(frozen=True)
class RuleTraits:
    """What the runner needs to know of a rule.

    Attributes:
        channels: The rule calls ``ops.project`` (AdamP, SGDP): weights keep their shape (the
            compiled runner passes ``(size(0), -1)`` channel views instead of flat tensors; the
            loop runner does not cut them into blocks).
        stages_update: The rule takes an optional last state and returns a value for it (AdamP:
            its unprojected update), which a runner may keep in a scratch buffer.
    """

    channels: bool
    stages_update: bool


class _Recording:
    """A runner's ops that note which primitives are looked up."""

    def __init__(self, ops: Any) -> None:
        self.called: set[str] = set()
        self._ops = ops

    def __getattr__(self, name: str) -> Any:
        self.called.add(name)
        return getattr(self._ops, name)


_TRAITS: dict[tuple[type, Apply, type], RuleTraits] = {}


def _meta(tensor: Tensor | None) -> Tensor | None:
    """A tensor of ``tensor``'s shape and dtype on the meta device: no memory, no arithmetic."""
    if tensor is None:
        return None
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def _runs(
    apply: Apply, algorithm: Any, row: tuple[Any, ...], extra: Tensor | None, scalars: Any, ops: Any
) -> set[str] | None:
    """The primitives ``apply`` calls on ``row`` (with ``extra`` as one more state); None if it fails."""
    param, grad, states, comp = row
    ops = _Recording(ops)
    states = (*states, extra) if extra is not None else states
    try:
        with torch.no_grad():
            apply(algorithm, ops, param, grad, states, comp, scalars, True)
    except Exception:  # any rule the probe cannot run keeps the safe answer
        return None
    return ops.called


def rule_traits(
    algorithm: Any, apply: Apply, row: tuple[Any, ...], scalars: SimpleNamespace, ops: Any
) -> RuleTraits:
    """The traits of ``algorithm``'s ``apply`` (cached per class, phase and type of ``ops``).

    Args:
        algorithm: The optimizer (or the runner's bare instance of its class).
        apply: The phase being run (the rule, or a reducing algorithm's phase).
        row: A representative ``(param, grad, states, kahan_comp)``; only shapes and dtypes are used.
        scalars: The step's scalars (only their types matter).
        ops: The runner's primitives, which the rule is run with (on meta tensors).
    """
    key = (type(algorithm), apply, type(ops))
    traits = _TRAITS.get(key)
    if traits is not None:
        return traits
    param, grad, states, comp = row
    meta_row = (_meta(param), _meta(grad), tuple(_meta(t) for t in states), _meta(comp))
    called = _runs(apply, algorithm, meta_row, None, scalars, ops)
    channels = True if called is None else "project" in called  # unknown: keep shapes, always right
    scratch = torch.empty(param.shape, dtype=torch.float32, device="meta")
    stages = channels and _runs(apply, algorithm, meta_row, scratch, scalars, ops) is not None
    traits = _TRAITS[key] = RuleTraits(channels=channels, stages_update=stages)
    return traits
