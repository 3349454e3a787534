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
    handles = [
        p.register_post_accumulate_grad_hook(optimizer.release_step)
        for p in model.parameters()
        if p.requires_grad
    ]
    setattr(model, _HOOKS_ATTRIBUTE, handles)


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


def release_step(optimizer: Optimizer, param: Tensor) -> None:
    """Steps one parameter on the loop runner and frees its gradient; the hook calls this.

    Parameters that are not in ``optimizer`` keep their gradient untouched.
    """
    group = _group_of(optimizer, param)
    if group is None or param.grad is None:
        return
    with torch.no_grad():
        buckets = prepare_buckets(optimizer, group, [param], optimizer.global_scalars())
        optimizer.run_buckets(buckets, "loop", not optimizer.optimizer_accumulation, apply_rule)
    param.grad = None
