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

from torch import nn

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
    if not isinstance(optimizer, Optimizer):
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
