"""D-Adaptation Lion: Lion with a step size estimated from the distance travelled."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.algorithms.distance import check_distance_group, finalize_weighted_numerator, max_lr_of, scaled
from fastoptim.optimizer import Optimizer, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_nonnegative


class DAdaptLion(Optimizer):
    r"""D-Adaptation Lion (experimental in dadaptation), following dadaptation 3.2.

    Example::

        optimizer = fastoptim.DAdaptLion(model.parameters())  # lr=1.0: d is estimated
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    With :math:`\delta = d\gamma` (:math:`\gamma` = the largest group lr) and
    :math:`\tilde\beta = \sqrt{\beta_2}`:

    .. math::

        u &= \operatorname{sign}(\beta_1 m + (1 - \beta_1)\, g), \qquad
        \theta \leftarrow \theta\,(1 - \delta\lambda) - \delta\, u \\
        m &\leftarrow \beta_2 m + (1 - \beta_2)\,\delta\, g, \qquad
        A = \textstyle\sum \delta\,\langle u, s\rangle, \qquad
        s \leftarrow \tilde\beta s + (1 - \tilde\beta)\,\delta\, u \\
        N &\leftarrow \tilde\beta N + (1 - \tilde\beta) A, \qquad
        d \leftarrow \max\big(d,\ N / ((1 - \tilde\beta) \textstyle\sum \lVert s\rVert_1)\big)

    The parameters move with this step's :math:`d`; the new estimate applies from the next step.
    As officially, :math:`m` carries the factor :math:`\delta` while the sign mixes it with the
    unscaled gradient, so the momentum has little influence while :math:`d\gamma \ll 1`
    (dadaptation#35).

    Advice from the authors: ``lr=1.0``; the usual schedule; weight decay as for Lion
    (decoupled, multiplied by the adapted step). Prefer DAdaptAdam where it works.

    Differences from the official code: groups with lr 0 are frozen (the official code moves them
    by the full step and counts them in the estimate); gradient release is refused; the two
    sums are read once per step instead of twice per parameter.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.99)).
        weight_decay: Decoupled decay coefficient (default: 0).
        log_every: Log d every this many steps; 0 disables (default: 0).
        d0: Initial distance estimate (default: 1e-6).
        fsdp_in_use: With plain-tensor parameters, sum the statistics over the default process
            group, as officially (default: False). Not needed under FSDP2 (detected) or with
            ``shard_group``.
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    REDUCES = True
    STATE_KEYS = ("exp_avg", "s")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        log_every: int = 0,
        d0: float = 1e-6,
        fsdp_in_use: bool = False,
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        gradient_release: bool = False,
        shard_group: Any = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        check_nonnegative(lr, "lr")
        arguments = hyperparameters(locals())
        super().__init__(params, **arguments, d=d0, k=0, numerator_weighted=0.0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 2)
        check_distance_group(group)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return 0.0, 0.0  # decoupled, scaled by d, in the rule

    def global_scalars(self) -> dict[str, Any]:
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        return {"beta1": beta1, "beta2": beta2, "sqrt_beta2": beta2**0.5, "dlr": first["d"] * max_lr_of(self)}

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        return {"active": lr > 0.0, "weight_decay": group["weight_decay"]}

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], Any]:
        if not s.active:
            return None, state, None
        exp_avg, sums = state
        dlr = s.dlr
        update = ops.sign_(ops.add_(ops.mul(exp_avg, s.beta1), grad, alpha=1 - s.beta1))
        exp_avg = ops.add_(ops.mul_(exp_avg, s.beta2), grad, alpha=(1 - s.beta2) * dlr)
        numerator = scaled(ops.dot(update, sums), dlr)
        sums = ops.add_(ops.mul_(sums, s.sqrt_beta2), update, alpha=(1 - s.sqrt_beta2) * dlr)

        def step_into(target: Any) -> Any:
            if is_set(s.weight_decay):
                if target is param:
                    target = ops.mul_(target, 1 - dlr * s.weight_decay)
                else:
                    target = ops.add_(target, param, alpha=-dlr * s.weight_decay)
            return ops.add_(target, update, alpha=-dlr)

        return (numerator, ops.abs_sum(sums)), (exp_avg, sums), step_into

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        finalize_weighted_numerator(self, sums, growth_rate=float("inf"))
        return None  # the parameters moved in the first phase
