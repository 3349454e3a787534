"""Gradient release: each parameter's optimizer step runs inside backward.

:func:`prepare_for_gradient_release` registers a post-accumulate-grad hook on every trainable
parameter of a model. When backward has finished accumulating a parameter's gradient, the hook
steps that parameter with the loop runner and frees the gradient, so peak memory holds at most a
few gradients instead of all of them.

The hooks look the parameter's group up at call time, so learning-rate schedulers,
``add_param_group`` and ``load_state_dict`` keep working while they are installed, and nothing but
optimizer state goes into checkpoints. Keep calling ``optimizer.step()`` once per iteration: it
steps whatever still holds a gradient (parameters without hooks) and keeps schedulers in sync.
Gradient accumulation does not combine with it; use ``optimizer.optimizer_accumulation`` instead.

Across ranks each parameter steps on the gradient every rank shares:

* **DDP** (the ``DistributedDataParallel`` model passed): the post-accumulate-grad hook would see
  this rank's own gradient, before DDP averages it, so the step runs instead in DDP's
  communication hook, once a bucket's all-reduce is done, on the averaged gradient. DDP then
  writes that gradient into ``p.grad`` as usual (its buckets keep the memory anyway); the
  parameter is not stepped again by ``optimizer.step()``.
* **FSDP2**: FSDP2 runs the post-accumulate-grad hooks of its sharded parameters after the
  reduce-scatter, on each rank's shard of the averaged gradient. AdamP's and SGDP's projection
  decisions for the parameter are then taken over the ranks in the hook
  (:func:`fastoptim.projection.sharded_projections`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fastoptim.bucketing import prepare_buckets
from fastoptim.runners.apply import apply_rule

if TYPE_CHECKING:
    from fastoptim.optimizer import Optimizer

_HOOKS_ATTRIBUTE = "_fastoptim_gradient_release_hooks"
#: Set on a DDP model once its communication hook is registered (DDP cannot remove it).
_DDP_HOOK_ATTRIBUTE = "_fastoptim_gradient_release_comm_hook"


def prepare_for_gradient_release(model: nn.Module, optimizer: Optimizer) -> None:
    """Installs the hooks that step ``optimizer`` inside ``model``'s backward.

    Args:
        model: The model whose trainable parameters get hooks.
        optimizer: A fastoptim optimizer constructed with ``gradient_release=True``.

    Raises:
        TypeError: ``optimizer`` is not a fastoptim optimizer.
        ValueError: ``optimizer`` was not built with ``gradient_release=True``, or ``model``
            already has gradient-release hooks.
    """
    if not callable(getattr(optimizer, "release_step", None)):
        raise TypeError(f"optimizer must be a fastoptim optimizer, got {type(optimizer).__name__}")
    if not optimizer.gradient_release:
        raise ValueError("optimizer must be constructed with gradient_release=True")
    if hasattr(model, _HOOKS_ATTRIBUTE):
        raise ValueError("model already has gradient-release hooks; call remove_gradient_release first")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        if not getattr(model, _DDP_HOOK_ATTRIBUTE, False):  # DDP takes one communication hook, for good
            model.register_comm_hook(_DdpRelease(model, optimizer), _step_after_all_reduce)
            setattr(model, _DDP_HOOK_ATTRIBUTE, True)
        setattr(model, _HOOKS_ATTRIBUTE, [])
        return
    handles = [
        p.register_post_accumulate_grad_hook(optimizer.release_step)
        for p in model.parameters()
        if p.requires_grad
    ]
    setattr(model, _HOOKS_ATTRIBUTE, handles)


class _DdpRelease:
    """The state of DDP's communication hook: the model and the optimizer its parameters step with."""

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer


def _step_after_all_reduce(state: _DdpRelease, bucket):  # unannotated: DDP checks the annotations
    """DDP's default all-reduce of a ``dist.GradBucket``, then each parameter's step on the average.

    Returns the all-reduce's future, as DDP's hooks do.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    future = allreduce_hook(state.model.process_group, bucket)
    if not hasattr(state.model, _HOOKS_ATTRIBUTE):  # removed: DDP keeps the hook, which only reduces
        return future

    def step(done: torch.futures.Future[Tensor]) -> Tensor:
        for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
            release_step(state.optimizer, param, grad)
        return done.value()

    return future.then(step)


def remove_gradient_release(model: nn.Module) -> None:
    """Removes the hooks installed by :func:`prepare_for_gradient_release`.

    Raises:
        ValueError: ``model`` has no gradient-release hooks.
    """
    handles = getattr(model, _HOOKS_ATTRIBUTE, None)
    if handles is None:
        raise ValueError("model has no gradient-release hooks to remove")
    for handle in handles:
        handle.remove()
    delattr(model, _HOOKS_ATTRIBUTE)


def _group_of(optimizer: Optimizer, param: Tensor) -> dict[str, Any] | None:
    """The param group holding ``param`` (an index kept until groups change), or None."""
    if optimizer._group_index is None:
        optimizer._group_index = {
            id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]
        }
    index = optimizer._group_index.get(id(param))
    return None if index is None else optimizer.param_groups[index]


def release_step(optimizer: Optimizer, param: Tensor, grad: Tensor | None = None) -> None:
    """Steps one parameter on the loop runner; the hooks call this.

    Args:
        optimizer: The optimizer ``param`` belongs to (a parameter outside it keeps its gradient).
        param: The parameter.
        grad: DDP's averaged gradient, which DDP itself then writes into ``param.grad``: the
            parameter is marked stepped until the next ``optimizer.step()``. None: ``param.grad``,
            freed after the step.
    """
    group = _group_of(optimizer, param)
    if group is None or (grad is None and param.grad is None):
        return
    if grad is not None:
        param.grad = grad
    with torch.no_grad():
        plans = [(group, prepare_buckets(optimizer, group, [param], optimizer.global_scalars()))]
        with optimizer.sharded_statistics(plans):
            optimizer.run_buckets(plans[0][1], "loop", not optimizer.optimizer_accumulation, apply_rule)
    if grad is None:
        param.grad = None
    else:
        optimizer.released.add(id(param))
