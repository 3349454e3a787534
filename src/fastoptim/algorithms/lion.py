"""Lion: evolved sign momentum."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.validation import check_betas


class Lion(Optimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    Example::

        optimizer = fastoptim.Lion(model.parameters(), lr=1e-4, weight_decay=1e-2)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    .. math::

        u_t &= \operatorname{sign}\big(\beta_1 m_{t-1} + (1 - \beta_1)\, g_t\big) \\
        \theta_t &= (1 - \gamma\lambda)\,\theta_{t-1} - \gamma\, u_t \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2)\, g_t

    Every coordinate moves by exactly :math:`\gamma`, so Lion wants a learning rate 3-10x smaller
    than AdamW's and a weight decay 3-10x larger to keep :math:`\gamma\lambda` similar.
    Weight decay is decoupled by default, as in the paper, optimi and lion-pytorch;
    ``decouple_lr=True`` gives fully decoupled decay (lion-pytorch's
    ``decoupled_weight_decay=True`` with ``max_lr`` = its initial lr) and ``decouple_wd=False``
    an L2 penalty.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (float or 0-d tensor); required.
        betas: :math:`(\beta_1, \beta_2)`: interpolation for the update and momentum decay
            (default: (0.9, 0.99)).
        weight_decay: Decay coefficient :math:`\lambda` (default: 0).
        decouple_wd: Decoupled weight decay (default: True).
        decouple_lr: Fully decoupled weight decay (default: False).
        max_lr: Peak scheduled learning rate for ``decouple_lr`` (default: None, meaning ``lr``).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("exp_avg",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decouple_wd: bool = True,
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

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {"beta1_comp": 1.0 - beta1, "beta2_comp": 1.0 - beta2, "neg_lr": -lr}

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        (exp_avg,) = state
        update = ops.sign_(ops.lerp(exp_avg, grad, s.beta1_comp))
        exp_avg = ops.lerp_(exp_avg, grad, s.beta2_comp)
        return (lambda target: ops.add_(target, update, alpha=s.neg_lr)), (exp_avg,)
