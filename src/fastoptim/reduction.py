"""Global reductions: partial sums from the runners, one sum on the device, then ``finalize``.

D-Adaptation and Prodigy estimate their step size from sums over every parameter of every group.
A reducing algorithm's step has two phases: ``accumulate`` (per tensor: advance the states and
return partial sums), then ``finalize`` (the global sums -> the update's scalars, such as ``d``)
and ``update``. The runners hand back partial sums in one of two formats, per tensor a tuple of
0-d tensors, or per group of rows one :class:`StackedPartials`; :func:`sum_partials` adds them up
on the device in float64 and reads the result once (one host sync per step, where the official
code calls ``.item()`` per parameter). This is where a cross-rank all-reduce of that one small
buffer belongs.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fastoptim.distributed import Sharding, local
from fastoptim.runners.apply import apply_accumulate, apply_one_pass, apply_update

if TYPE_CHECKING:
    from fastoptim.optimizer import Optimizer, Plan

#: A tensor's version counter (bumped by every in-place change).
_VERSION = operator.attrgetter("_version")
#: The ``state_dict()`` entry that carries a one-pass step across a checkpoint: per group, its
#: index, how it counted, and the positions of the parameters the last informative reduction
#: summed over (see :func:`informative_record`).
ONE_PASS_KEY = "fastoptim_one_pass"


@dataclass(frozen=True)
class StackedPartials:
    """Partial sums of several rows in one float64 tensor: row after row, ``width`` sums a row.

    One tensor instead of a 0-d tensor per row and sum, which made a 1000-tensor DAdaptSGD step
    about 2 ms (6%) slower to allocate, hand back and stack.

    Attributes:
        values: ``(rows * width,)``.
        width: Sums per row.
    """

    values: Tensor
    width: int

    def first_rows(self, rows: int) -> StackedPartials:
        """The partial sums of the first ``rows`` rows (itself when those are all of them)."""
        if rows * self.width == self.values.numel():
            return self
        return StackedPartials(self.values[: rows * self.width], self.width)


#: Most partial sums a reducing algorithm's step may return (the size of the all-reduced buffer).
MAX_SUMS = 8


def _local_sums(results: list[Any]) -> Tensor | None:
    """The float64 sums, on the device, of every tensor's partial sums; None if none contributed."""
    stacked = [result for result in results if isinstance(result, StackedPartials)]
    rows = [result for result in results if result is not None and not isinstance(result, StackedPartials)]
    if not rows and not stacked:
        return None
    columns: list[Any] = list(zip(*rows, strict=True))
    if any(isinstance(value, list) for column in columns for value in column):
        columns = [
            [t for value in column for t in (value if isinstance(value, list) else [value])]
            for column in columns
        ]
    if not stacked:
        return torch.stack([torch.stack(column).to(torch.float64).sum() for column in columns])
    width = stacked[0].width
    if any(part.width != width for part in stacked) or (columns and len(columns) != width):
        raise RuntimeError("the tensors of one step returned different numbers of partial sums")
    matrices = [part.values.view(-1, width) for part in stacked]
    if columns:
        matrices.append(torch.stack([torch.stack(column).to(torch.float64) for column in columns], dim=1))
    return torch.cat(matrices).t().contiguous().sum(dim=1)


def _all_reduced(sums: Tensor | None, sharding: Sharding) -> list[float] | None:
    """Every rank's sums added up, through one all-reduce of ``[ranks, width, *sums]``.

    A rank whose parameters had no gradient adds zeros; the ranks that did must agree on the
    number of sums.
    """
    buffer = torch.zeros(2 + MAX_SUMS, dtype=torch.float64, device=sharding.device)
    if sums is not None:
        if sums.numel() > MAX_SUMS:
            raise RuntimeError(f"a step returned {sums.numel()} partial sums; at most {MAX_SUMS} are reduced")
        buffer[0] = 1.0
        buffer[1] = sums.numel()
        buffer[2 : 2 + sums.numel()] = sums.to(sharding.device)
    ranks, widths, *values = sharding.all_reduce(buffer).tolist()
    if ranks == 0:
        return None
    width = round(widths / ranks)
    if width * ranks != widths or (sums is not None and width != sums.numel()):
        raise RuntimeError("the ranks of one step returned different numbers of partial sums")
    return values[:width]


def sum_partials(results: list[Any], sharding: Sharding | None = None) -> list[float] | None:
    """Adds up the partial sums of every tensor, on the device and in float64; one host sync.

    ``results`` holds, per tensor (or per list of tensors, from the foreach runner), None or a
    tuple of partial sums (each a 0-d tensor, or a list of them), or a :class:`StackedPartials`.
    With a ``sharding``, the sums of every rank that shares it are added up (one all-reduce).
    Returns None when no tensor contributed.
    """
    sums = _local_sums(results)
    if sharding is not None:
        return _all_reduced(sums, sharding)
    return None if sums is None else sums.tolist()


def reduce_and_update(optimizer: Optimizer, plans: list[Plan], update_params: bool) -> None:
    """A reducing algorithm's step: the reduction, ``finalize``, then the update.

    ``finalize`` skips the update when the reduction finds no information (the official code
    returns early when a sum over the states ``s`` is zero), so the update of a
    :attr:`~fastoptim.Optimizer.ONE_PASS` algorithm rides along with the reduction only when the
    sum cannot be zero: the last step's sum was nonzero, over the same parameters and groups, and
    nothing has touched their states since (same tensors, same version counters). The new sum is
    then zero only if every element of ``s`` cancels exactly; should that happen, the update is
    already done and a warning says so. The compiled backend runs the two-phase steps (the
    first, and those after a change) on the loop runner, so that it compiles one graph.
    """
    inputs = reduction_inputs(optimizer, plans)
    one_pass = optimizer.ONE_PASS and optimizer._informative_reduction == inputs
    optimizer.begin_reduction([bucket for _, buckets in plans for bucket in buckets], one_pass)
    apply = apply_one_pass if one_pass else apply_accumulate
    backend = optimizer.backend
    if optimizer.ONE_PASS and not one_pass and backend == "compiled":
        backend = "loop"  # first and fallback steps are rare: not worth compiling two more graphs
    run = optimizer.run_buckets
    partials = [r for _, buckets in plans for r in run(buckets, backend, update_params, apply)]
    final = optimizer.finalize(sum_partials(partials, optimizer.sharding))
    if final is None and one_pass:
        warnings.warn(
            f"{type(optimizer).__name__}: the states s cancelled to exactly zero, so the official code "
            "would have skipped this step's update, which fastoptim had already applied in one pass",
            RuntimeWarning,
            stacklevel=4,
        )
    elif final is None:
        if optimizer.UPDATE_ADVANCES_STATE:  # the states advance, the parameters stay (rare: eagerly)
            for _, buckets in plans:
                run(buckets, "loop", False, apply_update)
        optimizer.update_skipped([p for group, _ in plans for p in group["params"] if p.grad is not None])
    elif not one_pass:
        for _, buckets in plans:
            for bucket in buckets:
                bucket.scalars.__dict__.update(final)
            run(buckets, backend, update_params, apply_update)
    informative = optimizer.ONE_PASS and final is not None
    optimizer._informative_reduction = reduction_inputs(optimizer, plans) if informative else None


def _watched(optimizer: Optimizer, group: dict[str, Any]) -> list[int]:
    """The positions in ``state_keys(group)`` of the states whose changes are watched."""
    keys = optimizer.state_keys(group)
    if optimizer.REDUCTION_STATE_KEYS is None:
        return list(range(len(keys)))
    return [keys.index(key) for key in optimizer.REDUCTION_STATE_KEYS]


def _inputs(
    optimizer: Optimizer, group: dict[str, Any], buckets: list[list[list[Tensor]]]
) -> tuple[Any, ...]:
    """One group's entry of :func:`reduction_inputs`, from its buckets' state columns."""
    watched = _watched(optimizer, group)
    states = list(chain.from_iterable(columns[index] for columns in buckets for index in watched))
    versions = tuple(map(_VERSION, states))
    return (id(group), optimizer.counts_in_reduction(group), tuple(map(id, states)), versions)


def reduction_inputs(optimizer: Optimizer, plans: list[Plan]) -> tuple[Any, ...]:
    """What the reduction sums over: groups, how they count, their parameters' states.

    The states are those of the parameters with gradients
    (:attr:`~fastoptim.Optimizer.REDUCTION_STATE_KEYS` of them): which tensors, and their
    version counters (in-place changes such as ``restart_opt`` bump them).
    """
    return tuple(_inputs(optimizer, group, [bucket.states for bucket in buckets]) for group, buckets in plans)


def informative_record(optimizer: Optimizer) -> list[dict[str, Any]] | None:
    """The last informative reduction by group and parameter position, for a checkpoint.

    None unless the optimizer is :attr:`~fastoptim.Optimizer.ONE_PASS`, its last reduction was
    informative, and the states it summed over are as it left it (the next step would be one pass).
    """
    last = optimizer._informative_reduction
    if not optimizer.ONE_PASS or last is None:
        return None
    groups = {id(group): (index, group) for index, group in enumerate(optimizer.param_groups)}
    record = []
    for group_id, counts, state_ids, versions in last:
        if group_id not in groups:
            return None
        index, group = groups[group_id]
        keys = optimizer.state_keys(group)
        watched = [keys[slot] for slot in _watched(optimizer, group)]
        owner = {}
        for position, param in enumerate(group["params"]):
            state = optimizer.state.get(param, {})
            for key in watched:
                if key in state:
                    owner[id(local(state[key]))] = (position, local(state[key]))
        found = [owner.get(state_id) for state_id in state_ids]
        if any(item is None for item in found) or tuple(t._version for _, t in found) != versions:
            return None
        positions = sorted({position for position, _ in found})
        record.append({"group": index, "counts": counts, "params": positions})
    return record


def restore_record(optimizer: Optimizer, record: list[dict[str, Any]] | None) -> None:
    """After ``load_state_dict``: the loaded states stand for the last informative reduction.

    Rebuilds :func:`reduction_inputs` as the next step will compute it (its parameters bucketed
    by next step, device and dtype, in group order) from :func:`informative_record`'s entry, so
    that the resumed run's next step is one pass exactly when the uninterrupted run's is. Anything
    that does not fit (another optimizer's groups, a missing state) leaves the next step two-pass,
    which is always correct.
    """
    optimizer._informative_reduction = None
    if not optimizer.ONE_PASS or not record:
        return
    inputs = []
    try:
        for item in record:
            group = optimizer.param_groups[item["group"]]
            if optimizer.counts_in_reduction(group) != item["counts"]:
                return
            keys = optimizer.state_keys(group)
            buckets: dict[tuple[Any, ...], list[list[Tensor]]] = {}
            for position in item["params"]:
                param = group["params"][position]
                state = optimizer.state[param]
                key = (int(state["step"]) + 1, param.device, param.dtype)
                columns = buckets.setdefault(key, [[] for _ in keys])
                for column, name in zip(columns, keys, strict=True):
                    column.append(local(state[name]))
            inputs.append(_inputs(optimizer, group, list(buckets.values())))
    except (KeyError, IndexError, TypeError, ValueError):
        return
    optimizer._informative_reduction = tuple(inputs)
