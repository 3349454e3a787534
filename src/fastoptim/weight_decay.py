"""Weight decay as the machinery applies it: L2, decoupled, fully decoupled.

L2 adds ``wd * p`` to the gradient before the rule; decoupled decay (``decouple_wd``) multiplies
the parameter by ``1 - lr * wd`` with the update's write; fully decoupled decay (``decouple_lr``)
by ``1 - lr / max_lr * wd``, so that the decay does not shrink with a schedule's learning rate.
Algorithms with a decay rule of their own override :meth:`~fastoptim.Optimizer.weight_decay_terms`.
"""

from __future__ import annotations

from typing import Any

from fastoptim.validation import check_bool, check_nonnegative, check_positive


def decay_terms(group: dict[str, Any], lr: float) -> tuple[float, float]:
    """The L2 coefficient and the decoupled decay rate of ``group`` at learning rate ``lr``.

    Exactly one of them is nonzero, or neither.
    """
    weight_decay = group.get("weight_decay", 0.0)
    if not weight_decay:
        return 0.0, 0.0
    if group.get("decouple_lr"):
        return 0.0, lr / float(group["max_lr"]) * weight_decay
    if group.get("decouple_wd"):
        return 0.0, lr * weight_decay
    return weight_decay, 0.0


def check_weight_decay(group: dict[str, Any]) -> None:
    """Validates ``weight_decay``, ``decouple_wd``, ``decouple_lr`` and ``max_lr`` (``lr`` if unset)."""
    check_nonnegative(group.get("weight_decay", 0.0), "weight_decay")
    for flag in ("decouple_wd", "decouple_lr"):
        if flag in group:
            check_bool(group[flag], flag)
    if group.get("decouple_lr"):
        if group.get("max_lr") is None:
            group["max_lr"] = float(group["lr"])
        try:
            check_positive(group["max_lr"], "max_lr")
        except ValueError as error:
            raise ValueError(
                f"{error}: decouple_lr=True divides the learning rate by max_lr; "
                "pass max_lr= the peak of your learning-rate schedule"
            ) from None
    elif group.get("max_lr") is not None:
        check_positive(group["max_lr"], "max_lr")
