"""Sharded training: each rank steps its own shards; a step's statistics are summed over ranks.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a parameter, its gradient and the states
made from it (``torch.zeros_like``) are DTensors. A step works on their local tensors (this
rank's shard, possibly empty), so every elementwise rule runs unchanged, on every backend, and
the states stay DTensors of the parameter's placement (``state_dict()`` and
``torch.distributed.checkpoint`` see sharded states).

What an algorithm computes over more than one element is summed on each rank over its shards
and then all-reduced, so that it covers the whole model: D-Adaptation's and Prodigy's sums
(:func:`fastoptim.reduction.sum_partials`, one buffer a step), Adan's clipping norm and
DAdaptSGD's first gradient norm (:meth:`Sharding.sum`). Which ranks share a sum:

* **DTensor parameters**: the process groups of the mesh dimensions they are sharded over
  (``Shard``). The ranks along a ``Replicate`` dimension hold the same shards and compute the
  same sums, so nothing is reduced over it (HSDP). ``Partial`` placements are refused, and so
  are parameters of one optimizer on different meshes or sharded over different mesh
  dimensions (their sums would not add up over one set of ranks).
* **``shard_group``** (a ``torch.distributed.ProcessGroup``): for a sharding the parameters do
  not show, where each rank holds whole parameters of its own (``ZeroRedundancyOptimizer``, a
  partition of one's own). The sums are all-reduced over that group.
* **``fsdp_in_use=True``** (dadaptation's and prodigyopt's flag), with plain tensors: the
  default group, as in the official code.

Every rank of a group takes part in each all-reduce, also a rank without a parameter that has a
gradient: its share is zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - a torch built without distributed support
    DTensor = None


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """This rank's part of ``tensor``: a DTensor's local tensor (the same object every call)."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


@dataclass(frozen=True, eq=False)
class Sharding:
    """The process groups a step's sums are all-reduced over, in turn.

    Attributes:
        groups: One group per sharded mesh dimension (one for FSDP2, HSDP and ``shard_group``).
        device: Where the sums are reduced (the parameters' device).
    """

    groups: tuple[dist.ProcessGroup, ...]
    device: torch.device

    def all_reduce(self, values: Tensor) -> Tensor:
        """Sums ``values`` in place over every rank that shares the sums; returns it."""
        for group in self.groups:
            dist.all_reduce(values, group=group)
        return values

    def max_and_sum(self, maxima: Tensor, sums: Tensor) -> tuple[Tensor, Tensor]:
        """The elementwise largest of ``maxima`` and sum of ``sums`` over the ranks.

        One all-gather per group of both (float64), combined in rank order on every rank.
        """
        count = maxima.numel()
        packed = torch.cat((maxima.reshape(-1), sums.reshape(-1))).to(torch.float64)
        for group in self.groups:
            gathered = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered, packed, group=group)
            rows = torch.stack(gathered)
            packed = torch.cat((rows[:, :count].amax(dim=0), rows[:, count:].sum(dim=0)))
        return packed[:count].view_as(maxima), packed[count:].view_as(sums)

    def sum(self, local_sum: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The sum over the ranks of each rank's ``local_sum`` (None: this rank adds nothing)."""
        if local_sum is None:
            local_sum = torch.zeros((), dtype=dtype, device=self.device)
        return self.all_reduce(local_sum.to(dtype=dtype, device=self.device).clone())


def _describe(index: int, param: Tensor) -> str:
    if not is_dtensor(param):
        return f"parameter {index} (a plain tensor)"
    return f"parameter {index} (placements {tuple(param.placements)} on {param.device_mesh})"


def _check_group(shard_group: object) -> None:
    if not isinstance(shard_group, dist.ProcessGroup):
        raise TypeError(
            f"shard_group must be a torch.distributed.ProcessGroup or None, got {type(shard_group).__name__}"
        )
    if not dist.is_initialized():
        raise ValueError("shard_group needs torch.distributed to be initialised (dist.init_process_group)")


def find_sharding(
    params: Iterable[Tensor], shard_group: object = None, fsdp_in_use: bool = False
) -> Sharding | None:
    """The :class:`Sharding` of an optimizer's parameters; None when each rank sums on its own.

    Args:
        params: Every parameter of the optimizer, in group order.
        shard_group: The user's ``shard_group`` argument (see the module's docstring).
        fsdp_in_use: The official flag: the default group when the parameters show no sharding.

    Raises:
        TypeError: ``shard_group`` is not a process group.
        ValueError: A sharding the sums cannot be reduced over (see the module's docstring),
            naming the first parameter that does not fit.
    """
    params = list(params)
    dtensors = [(i, p) for i, p in enumerate(params) if is_dtensor(p)]
    device = params[0].device if params else torch.device("cpu")
    if shard_group is not None:
        _check_group(shard_group)
        if dtensors:
            index, param = dtensors[0]
            raise ValueError(
                "shard_group is for parameters whose sharding torch cannot see, but "
                f"{_describe(index, param)} is a DTensor, whose mesh says which ranks share its sums; "
                "pass shard_group=None"
            )
        return Sharding((shard_group,), device)
    if not dtensors:
        if fsdp_in_use and dist.is_initialized() and dist.get_world_size() > 1:
            return Sharding((dist.group.WORLD,), device)
        return None
    if len(dtensors) != len(params):
        index = next(i for i, p in enumerate(params) if not is_dtensor(p))
        raise ValueError(
            f"{_describe(index, params[index])} sits beside DTensor parameters: whether its sums are to be "
            "added over the ranks cannot be told; shard the whole model (fully_shard on the root module) "
            "or give it an optimizer of its own"
        )
    first_index, first = dtensors[0]
    mesh = first.device_mesh
    sharded_dims = _sharded_dims(first_index, first)
    for index, param in dtensors[1:]:
        if param.device_mesh != mesh or _sharded_dims(index, param) != sharded_dims:
            raise ValueError(
                f"{_describe(index, param)} is not sharded over the same mesh dimensions as "
                f"{_describe(first_index, first)}: one optimizer's sums must add up over one set of ranks"
            )
    if not sharded_dims:
        return None
    return Sharding(tuple(mesh.get_group(dim) for dim in sharded_dims), first.device)


def _sharded_dims(index: int, param: Tensor) -> tuple[int, ...]:
    """The mesh dimensions ``param`` is sharded over; refuses ``Partial`` placements."""
    dims = []
    for dim, placement in enumerate(param.placements):
        if placement.is_partial():
            raise ValueError(
                f"{_describe(index, param)}: a Partial placement holds unreduced values, "
                "which no step can use"
            )
        if placement.is_shard():
            dims.append(dim)
    return tuple(dims)
