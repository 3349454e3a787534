"""Adam and AdamW."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.validation import check_betas, check_nonnegative


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), with optional decoupled (AdamW) or fully decoupled decay.

    Example::

        optimizer = fastoptim.Adam(model.parameters(), lr=1e-3)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1)\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \gamma\, \frac{m_t / (1 - \beta_1^t)}
                    {\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}

    The maths is ``torch.optim.Adam``'s; the defaults and weight-decay options are optimi's:
    ``betas=(0.9, 0.99)`` and ``eps=1e-6`` usually outperform PyTorch's (0.9, 0.999) and 1e-8.
    With large batches or loss spikes, lower :math:`\beta_2` into [0.95, 0.99).

    Weight decay :math:`\lambda` is an L2 penalty (:math:`g_t \leftarrow g_t + \lambda\theta`) by
    default; ``decouple_wd=True`` gives AdamW (:math:`\theta \leftarrow (1 - \gamma\lambda)\theta`)
    and ``decouple_lr=True`` fully decoupled decay
    (:math:`\theta \leftarrow (1 - \tfrac{\gamma}{\gamma_{max}}\lambda)\theta`), which needs a much
    smaller :math:`\lambda` (about ``lr`` times smaller) because it is not scaled by the learning
    rate.

    Implementation note: the bias correction of :math:`v` is folded into the scalars
    (:math:`\epsilon\sqrt{1-\beta_2^t}` in the denominator, :math:`\gamma\sqrt{1-\beta_2^t}/(1-\beta_1^t)`
    as the step size), which saves one pass over memory; the state holds the usual biased moments
    ``exp_avg`` and ``exp_avg_sq``.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (float or 0-d tensor); required.
        betas: Coefficients :math:`(\beta_1, \beta_2)` of the moving averages (default: (0.9, 0.99)).
        weight_decay: Decay coefficient :math:`\lambda` (default: 0).
        eps: Added to the denominator (default: 1e-6).
        decouple_wd: Decoupled weight decay, as AdamW (default: False).
        decouple_lr: Fully decoupled weight decay (default: False).
        max_lr: Peak scheduled learning rate for ``decouple_lr`` (default: None, meaning ``lr``).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("exp_avg", "exp_avg_sq")
    COMPLEX = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        eps: float = 1e-6,
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
        check_betas(group["betas"], 2)
        check_nonnegative(group["eps"], "eps")

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        bias_correction1 = 1.0 - beta1**step
        bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        return {
            "beta1_comp": 1.0 - beta1,
            "beta2": beta2,
            "beta2_comp": 1.0 - beta2,
            "eps_hat": group["eps"] * bias_correction2_sqrt,
            "neg_step_size": -lr * bias_correction2_sqrt / bias_correction1,
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        exp_avg, exp_avg_sq = state
        exp_avg = ops.lerp_(exp_avg, grad, s.beta1_comp)
        exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta2), grad, grad, value=s.beta2_comp)

        def step_into(target: Any) -> Any:
            denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps_hat)
            return ops.addcdiv_(target, exp_avg, denom, value=s.neg_step_size)

        return step_into, (exp_avg, exp_avg_sq)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    Example::

        optimizer = fastoptim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    :math:`\theta \leftarrow (1 - \gamma\lambda)\,\theta` before the Adam update of :class:`Adam`;
    ``decouple_lr=True`` makes it :math:`(1 - \tfrac{\gamma}{\gamma_{max}}\lambda)\,\theta`.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate (float or 0-d tensor); required.
        betas: Coefficients of the moving averages (default: (0.9, 0.99)).
        weight_decay: Decoupled decay coefficient (default: 1e-2).
        eps: Added to the denominator (default: 1e-6).
        decouple_lr: Fully decoupled weight decay (default: False).
        max_lr: Peak scheduled learning rate for ``decouple_lr`` (default: None, meaning ``lr``).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 1e-2,
        eps: float = 1e-6,
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
        super().__init__(params, decouple_wd=True, **hyperparameters(locals()))
