"""D-Adaptation Adan: Adan with a learning rate estimated from the distance travelled."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.algorithms.distance import check_distance_group, first_group_dlr, logger
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.validation import check_betas, check_positive


class DAdaptAdan(Optimizer):
    r"""D-Adaptation Adan (experimental in dadaptation), following dadaptation 3.2.

    Example::

        optimizer = fastoptim.DAdaptAdan(model.parameters())  # lr=1.0: d is estimated
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    With :math:`\delta = d\gamma` (:math:`\gamma` = the first group's lr),
    :math:`\Delta = g - g_{prev}` (0 at a parameter's first step), :math:`u = g + \beta_2\Delta`
    and :math:`D = \sqrt{n} + \epsilon`:

    .. math::

        m &\leftarrow \beta_1 m + \delta(1 - \beta_1)\, g, \qquad
        d_m \leftarrow \beta_2 d_m + \delta(1 - \beta_2)\, \Delta, \qquad
        n \leftarrow \beta_3 n + (1 - \beta_3)\, u^2 \\
        s &\leftarrow \beta_3 s + \delta(1 - \beta_3)\, g, \qquad
        G \leftarrow \beta_3 G + (1 - \beta_3)\,\delta^2 \textstyle\sum g^2 / D \\
        \hat d &= \Big(\frac{\sum s^2 / D}{1 - \beta_3} - G\Big) \Big/ \textstyle\sum \lVert s \rVert_1,
            \qquad d \leftarrow \max\big(d,\ \min(\hat d,\ d \cdot \text{growth\_rate})\big) \\
        \theta &\leftarrow \big(\theta - (m + \beta_2 d_m) / D\big) / (1 + \delta\lambda)
            \quad (\texttt{no\_prox}: \theta (1 - \delta\lambda) - (m + \beta_2 d_m)/D)

    No bias correction. Note the default ``weight_decay=0.02``, unlike the other D-Adaptation
    optimizers. ``restart_opt()`` resets the moments, ``s`` and :math:`G` (not :math:`d`).

    Advice from the authors: ``lr=1.0`` and the usual schedule; Adan's own advice on
    :math:`\beta_3` (0.999 if unstable) applies.

    Differences from the official code: gradient release is refused; the three sums are read
    once per step (the official code calls ``.item()`` three times per parameter). As officially,
    only the first group's lr counts (other groups' lr values are ignored), weight decay and
    eps are per group, and a step skipped because :math:`\sum \lVert s \rVert_1 = 0` (an all-zero
    first gradient, or after ``restart_opt()``) does not count: the next one starts with
    :math:`\Delta = 0` again.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        betas: :math:`(\beta_1, \beta_2, \beta_3)` (default: (0.98, 0.92, 0.99)).
        eps: Added to the denominator (default: 1e-8).
        weight_decay: Decay coefficient :math:`\lambda` (default: 0.02).
        no_prox: AdamW-style decay instead of the proximal step (default: False).
        log_every: Log d every this many steps; 0 disables (default: 0).
        d0: Initial distance estimate (default: 1e-6).
        growth_rate: Largest factor by which :math:`d` may grow per step (default: inf).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    REDUCES = True
    ONE_PASS = True
    STATE_KEYS = ("s", "exp_avg", "exp_avg_diff", "exp_avg_sq", "pre_grad")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.02,
        no_prox: bool = False,
        log_every: int = 0,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        gradient_release: bool = False,
        shard_group: Any = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        check_positive(lr, "lr")
        arguments = hyperparameters(locals())
        super().__init__(params, **arguments, d=d0, k=0, gsq_weighted=0.0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 3)
        check_positive(group["eps"], "eps")
        check_distance_group(group)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return 0.0, 0.0  # proximal or AdamW-style, scaled by d, in the update

    def restart_opt(self) -> None:
        """Restarts: moments, ``s`` and the weighted gradient sum to zero (``d`` is kept)."""
        for group in self.param_groups:
            group["gsq_weighted"] = 0.0
            for p in group["params"]:
                state = self.state.get(p)
                if not p.requires_grad or not state:
                    continue
                state["step"] = 0
                for key in ("s", "exp_avg", "exp_avg_diff", "exp_avg_sq"):
                    state[key].zero_()

    def update_skipped(self, params: list[Tensor]) -> None:
        # the official step counter advances only with an update: the next step starts afresh
        for p in params:
            self.state[p]["step"] -= 1

    def global_scalars(self) -> dict[str, Any]:
        beta1, beta2, beta3 = self.param_groups[0]["betas"]
        return {"beta1": beta1, "beta2": beta2, "beta3": beta3, "dlr": first_group_dlr(self)}

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        dlr = first_group_dlr(self)
        return {
            "first": step == 1,
            "eps": group["eps"],
            "no_prox": self.param_groups[0]["no_prox"],
            "decay": dlr * group["weight_decay"],
        }

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], None]:
        sums, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad = state
        if s.first:
            pre_grad = ops.copy_(pre_grad, grad)
        dlr = s.dlr
        diff = ops.sub(grad, pre_grad)
        update = ops.add_(ops.mul(diff, s.beta2), grad)  # g + beta2 * diff
        exp_avg = ops.add_(ops.mul_(exp_avg, s.beta1), grad, alpha=dlr * (1.0 - s.beta1))
        exp_avg_diff = ops.add_(ops.mul_(exp_avg_diff, s.beta2), diff, alpha=dlr * (1.0 - s.beta2))
        exp_avg_sq = ops.add_(ops.mul_(exp_avg_sq, s.beta3), ops.square(update), alpha=1.0 - s.beta3)
        denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps)
        grad_sq = ops.div_sum(ops.square(grad), denom)
        sums = ops.add_(ops.mul_(sums, s.beta3), grad, alpha=dlr * (1.0 - s.beta3))
        partials = (grad_sq, ops.div_sum(ops.square(sums), denom), ops.abs_sum(sums))
        return (
            partials,
            (sums, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad),
            None,
        )

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        grad_sq, weighted_sq, l1 = sums if sums is not None else (0.0, 0.0, 0.0)
        first = self.param_groups[0]
        beta3 = first["betas"][2]
        dlr = first_group_dlr(self)
        gsq_weighted = beta3 * first["gsq_weighted"] + grad_sq * (dlr**2) * (1 - beta3)
        if l1 == 0:
            return None
        d = d_hat = first["d"]
        if float(first["lr"]) > 0.0:
            d_hat = (weighted_sq / (1 - beta3) - gsq_weighted) / l1
            d = max(d, min(d_hat, d * first["growth_rate"]))
        if first["log_every"] > 0 and first["k"] % first["log_every"] == 0:
            logger.info(
                "DAdaptAdan k=%d d_hat=%.3e d=%.3e gsq_weighted=%.1e", first["k"], d_hat, d, gsq_weighted
            )
        for group in self.param_groups:
            group["gsq_weighted"] = gsq_weighted
            group["d"] = d
            group["k"] += 1
        return {}

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        sums, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad = state
        denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps)
        direction = ops.div_(ops.add_(ops.mul(exp_avg_diff, s.beta2), exp_avg), denom)
        pre_grad = ops.copy_(pre_grad, grad)

        def step_into(target: Any) -> Any:
            if target is param:
                if s.no_prox:
                    return ops.add_(ops.mul_(target, 1 - s.decay), direction, alpha=-1.0)
                return ops.div_(ops.add_(target, direction, alpha=-1.0), 1 + s.decay)
            if s.no_prox:
                return ops.add_(ops.add_(target, param, alpha=-s.decay), direction, alpha=-1.0)
            # proximal step as an increment: (p - U) / (1 + decay) - p
            moved = ops.div_(ops.add_(ops.to_fp32(param), direction, alpha=-1.0), 1 + s.decay)
            return ops.add_(target, ops.sub_(moved, param))

        return step_into, (sums, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad)
