"""Stochastic gradient descent with momentum, dampening and Nesterov momentum."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_bool, check_unit_interval


class SGD(Optimizer):
    r"""SGD with momentum, exactly ``torch.optim.SGD``'s maths.

    Example::

        optimizer = fastoptim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    .. math::

        b_t &= \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1 - \tau)\, g_t & t > 1 \end{cases} \\
        d_t &= \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise} \end{cases} \\
        \theta_t &= \theta_{t-1} - \gamma\, d_t

    with momentum :math:`\mu` and dampening :math:`\tau`; without momentum :math:`d_t = g_t` and
    no state is kept. Weight decay follows :class:`~fastoptim.Adam`: L2 by default (added to
    :math:`g_t` before the momentum, as torch does), ``decouple_wd`` or ``decouple_lr`` for
    decoupled and fully decoupled decay.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (float or 0-d tensor); required.
        momentum: Momentum factor :math:`\mu` in [0, 1) (default: 0).
        dampening: Dampening :math:`\tau` in [0, 1) (default: 0).
        weight_decay: Decay coefficient (default: 0).
        nesterov: Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0`` (default: False).
        decouple_wd: Decoupled weight decay (default: False).
        decouple_lr: Fully decoupled weight decay (default: False).
        max_lr: Peak scheduled learning rate for ``decouple_lr`` (default: None, meaning ``lr``).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        decouple_wd: bool = False,
        decouple_lr: bool = False,
        max_lr: float | None = None,
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        gradient_release: bool = False,
        shard_group: Any = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        super().__init__(params, **hyperparameters(locals()))

    def check_group(self, group: dict[str, Any]) -> None:
        check_unit_interval(group["momentum"], "momentum")
        check_unit_interval(group["dampening"], "dampening")
        check_bool(group["nesterov"], "nesterov")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening == 0")

    COMPLEX = True

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        first = step == 1
        return {
            # At the first step b = 0 * 0 + 1 * g = g exactly, torch's clone of the gradient.
            "momentum": 0.0 if first else group["momentum"],
            "grad_weight": 1.0 if first else 1.0 - group["dampening"],
            "nesterov_momentum": group["momentum"] if group["nesterov"] else 0.0,
            "neg_lr": -lr,
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        if not state:
            return (lambda target: ops.add_(target, grad, alpha=s.neg_lr)), ()
        (buffer,) = state
        buffer = ops.add_(ops.mul_(buffer, s.momentum), grad, alpha=s.grad_weight)
        direction = buffer
        if is_set(s.nesterov_momentum):
            direction = ops.add(grad, buffer, alpha=s.nesterov_momentum)
        return (lambda target: ops.add_(target, direction, alpha=s.neg_lr)), (buffer,)
