"""D-Adaptation Adam: Adam with a learning rate estimated from the distance travelled."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.algorithms.distance import check_distance_group, finalize_weighted_numerator, max_lr_of, scaled
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_nonnegative, check_positive


class DAdaptAdam(Optimizer):
    r"""D-Adaptation Adam (Defazio & Mishchenko, ICML 2023), following dadaptation 3.2.

    Example::

        optimizer = fastoptim.DAdaptAdam(model.parameters())  # lr=1.0: d is estimated
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    One distance estimate :math:`d` for all parameters; the step scale is
    :math:`\delta = d\gamma` (:math:`\gamma` = the largest group lr; other groups must use that
    lr or 0, and ``layer_scale`` :math:`r` scales a group instead). With
    :math:`\tilde\beta = \sqrt{\beta_2}` and :math:`D = \sqrt{v} + \epsilon`:

    .. math::

        A &= \textstyle\sum r\,\delta\,\langle g, s / D_{old}\rangle, \qquad
        N \leftarrow \tilde\beta N + (1 - \tilde\beta) A \\
        m &\leftarrow \beta_1 m + r\delta(1 - \beta_1)\, g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2)\, g^2, \qquad
        s \leftarrow \tilde\beta s + \delta(1 - \tilde\beta)\, g \\
        d &\leftarrow \max\Big(d,\ \min\big(\tfrac{N}{(1 - \tilde\beta)\sum r \lVert s \rVert_1},\
            d \cdot \text{growth\_rate}\big)\Big) \\
        \theta &\leftarrow \theta - m / (\sqrt{v} + \epsilon)

    The step size is folded into :math:`m`, so an lr schedule acts through new gradients only (its
    effect lags by the momentum horizon, unlike torch's Adam).

    Advice from the authors: keep ``lr=1.0`` and use the schedule you would use otherwise (warm-up
    and cosine or linear decay); weight decay multiplies the small adapted lr, so try a value 2-4x
    larger than with Adam; ``decouple=True`` for AdamW-style decay; scale groups with
    ``layer_scale``. The estimate grows monotonically; ``growth_rate`` bounds its growth per step.

    Implementation: the two global sums are added on the device and read once per step (the
    official code calls ``.item()`` twice per parameter); ``d``, ``k`` and
    ``numerator_weighted`` are in every param group after each step, as officially. Logging goes
    to the ``fastoptim`` logger every ``log_every`` steps.

    Differences from the official code: ``p.grad`` is not modified by coupled weight decay;
    gradient release is refused (the estimate needs every parameter before any update); the
    per-parameter ``step`` counts calls, also those where no update happens. As officially,
    decoupled decay reaches groups with lr 0. Under FSDP2 the sums cover every rank without
    ``fsdp_in_use`` (the official code detects FSDP-1 only; see ``docs/features/distributed.md``).

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps: Added to the denominator (default: 1e-8).
        weight_decay: Decay coefficient (default: 0).
        log_every: Log d every this many steps; 0 disables (default: 0).
        decouple: AdamW-style decay ``p -= d * lr * wd * p`` (default: False: L2).
        use_bias_correction: Adam's bias correction in the step scale (default: False).
        d0: Initial distance estimate (default: 1e-6).
        growth_rate: Largest factor by which :math:`d` may grow per step (default: inf).
        fsdp_in_use: With plain-tensor parameters, sum the statistics over the default process
            group, as officially (default: False). Not needed under FSDP2 (detected) or with
            ``shard_group``.
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    REDUCES = True
    ONE_PASS = True
    STATE_KEYS = ("s", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
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
        check_positive(lr, "lr")
        arguments = hyperparameters(locals())
        super().__init__(params, **arguments, d=d0, k=0, layer_scale=1.0, numerator_weighted=0.0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 2)
        check_positive(group["eps"], "eps")
        check_distance_group(group)
        check_nonnegative(group["layer_scale"], "layer_scale")

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        # coupled decay through the gradient; decoupled decay (scaled by d) in the update
        return (0.0 if self.param_groups[0]["decouple"] else group["weight_decay"]), 0.0

    def global_scalars(self) -> dict[str, Any]:
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        k, d = first["k"], first["d"]
        lr = max_lr_of(
            self,
            ". To scale the learning rate differently for each layer, set the 'layer_scale' value instead.",
        )
        correction = 1.0
        if first["use_bias_correction"]:
            correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
        dlr = d * lr * correction
        return {"beta1": beta1, "beta2": beta2, "sqrt_beta2": beta2**0.5, "dlr": dlr, "max_lr": lr}

    def counts_in_reduction(self, group: dict[str, Any]) -> Any:
        # a group with layer_scale 0 adds nothing to the sums
        return float(group["lr"]) > 0.0 and group["layer_scale"] > 0.0

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        decouple = self.param_groups[0]["decouple"]
        return {
            "active": lr > 0.0,
            "eps": group["eps"],
            "layer_scale": group["layer_scale"],
            "neg_decay": -group["weight_decay"] if decouple else 0.0,
        }

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], None]:
        if not s.active:
            return None, state, None
        sums, exp_avg, exp_avg_sq = state
        r, dlr = s.layer_scale, s.dlr
        denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps)
        numerator = scaled(ops.dot(grad, ops.div(sums, denom)), r * dlr)
        exp_avg = ops.add_(ops.mul_(exp_avg, s.beta1), grad, alpha=r * dlr * (1 - s.beta1))
        exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta2), grad, grad, value=1 - s.beta2)
        sums = ops.add_(ops.mul_(sums, s.sqrt_beta2), grad, alpha=dlr * (1 - s.sqrt_beta2))
        return (numerator, scaled(ops.abs_sum(sums), r)), (sums, exp_avg, exp_avg_sq), None

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        growth_rate = self.param_groups[0]["growth_rate"]
        return {} if finalize_weighted_numerator(self, sums, growth_rate) else None

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        _, exp_avg, exp_avg_sq = state
        denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps)

        def step_into(target: Any) -> Any:
            if is_set(s.neg_decay):
                target = ops.add_(target, param, alpha=s.neg_decay * s.dlr)
            return ops.addcdiv_(target, exp_avg, denom, value=-1.0)

        return step_into, state
