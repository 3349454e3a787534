"""Building optimizers by name, and the usual weight-decay parameter groups."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from fastoptim import algorithms
from fastoptim.optimizer import Optimizer
from fastoptim.validation import check_nonnegative


def _normalise(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


OPTIMIZERS: dict[str, type[Optimizer]] = {
    _normalise(name): getattr(algorithms, name) for name in algorithms.__all__
}


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, skip: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Splits a model's trainable parameters into a decayed and an undecayed group (timm's rule).

    Biases, normalisation weights and every other parameter with fewer than two dimensions get no
    weight decay, nor do parameters whose name is in ``skip``.

    Args:
        model: The model.
        weight_decay: Decay for the decayed group.
        skip: Names (as in ``model.named_parameters()``) to exclude from decay.

    Returns:
        ``[{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]``.
    """
    check_nonnegative(weight_decay, "weight_decay")
    skip = set(skip)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def _default_weight_decay(cls: type[Optimizer]) -> Any:
    """The class's default ``weight_decay`` (0 where it has none)."""
    parameter = inspect.signature(cls).parameters.get("weight_decay")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return 0.0
    return parameter.default


def create_optimizer(
    name_or_class: str | type[Optimizer],
    model_or_params: nn.Module | Iterable[Tensor] | Iterable[dict[str, Any]],
    **kwargs: Any,
) -> Optimizer:
    """Builds an optimizer from its name, case-insensitively (``"adamw"``, ``"Lion"``).

    Underscores and dashes are ignored, so ``"dadapt_adam"`` names ``DAdaptAdam``. Given a module
    and a nonzero ``weight_decay`` (passed, or the class default, as AdamW's 1e-2), biases and
    normalisation weights are left undecayed with
    :func:`param_groups_weight_decay` (as timm does); pass ``model.parameters()`` to decay all.

    Args:
        name_or_class: Optimizer name or class.
        model_or_params: A module, or what the optimizer's ``params`` argument accepts.
        **kwargs: Passed to the optimizer's constructor.

    Raises:
        ValueError: Unknown optimizer name.
    """
    if isinstance(name_or_class, str):
        cls = OPTIMIZERS.get(_normalise(name_or_class))
        if cls is None:
            known = ", ".join(sorted(algorithms.__all__))
            raise ValueError(f"unknown optimizer {name_or_class!r}; known: {known}")
    elif isinstance(name_or_class, type) and issubclass(name_or_class, Optimizer):
        cls = name_or_class
    else:
        raise TypeError(f"name_or_class must be a name or a fastoptim optimizer class, got {name_or_class!r}")
    params: Any = model_or_params
    if isinstance(model_or_params, nn.Module):
        weight_decay = kwargs.get("weight_decay", _default_weight_decay(cls))
        if weight_decay:
            params = param_groups_weight_decay(model_or_params, weight_decay)
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    return cls(params, **kwargs)
