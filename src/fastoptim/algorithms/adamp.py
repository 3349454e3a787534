"""AdamP and SGDP: Adam and SGD that slow down the norm growth of scale-invariant weights."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.optimizer import Optimizer, Plan, RuleResult, hyperparameters
from fastoptim.projection import check_sharded_weights, sharded_projections
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_bool, check_nonnegative, check_unit_interval


def _check_projection(group: dict[str, Any]) -> None:
    check_nonnegative(group["eps"], "eps")
    check_nonnegative(group["delta"], "delta")
    check_nonnegative(group["wd_ratio"], "wd_ratio")
    check_bool(group["nesterov"], "nesterov")
    check_sharded_weights(group)


def _decayed_step(ops: Any, param: Any, target: Any, rate: Any, update: Any, neg_step: float) -> Any:
    """Decays by ``rate`` (per tensor) and adds ``neg_step * update`` to ``target``.

    On the parameter itself ``p *= 1 - rate`` as adamp does; on a Kahan buffer or a float32 copy
    ``t += -rate * p``.
    """
    if target is param:
        target = ops.mul_(target, ops.each(rate, lambda r: 1.0 - r))
    else:
        target = ops.add_(target, ops.mul(ops.to_fp32(param), ops.each(rate, lambda r: -r)))
    return ops.add_(target, update, alpha=neg_step)


class AdamP(Optimizer):
    r"""AdamP (Heo et al., ICLR 2021), following the official adamp 0.3.0.

    Example::

        optimizer = fastoptim.AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    .. math::

        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        u &= \frac{m}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}
            \quad\Big(\text{nesterov: } \frac{\beta_1 m + (1 - \beta_1) g}{\cdots}\Big) \\
        (u, r) &= \Pi(\theta, g, u) \\
        \theta &\leftarrow \theta\,(1 - \gamma\lambda r) - \frac{\gamma}{1 - \beta_1^t}\, u

    :math:`\Pi` (:func:`fastoptim.projection.project`): for parameters with more than one
    dimension whose gradient is nearly orthogonal to them (:math:`\max|\cos| < \delta/\sqrt{d}`
    per output channel, else for the whole tensor), the update loses its radial component and the
    decay is scaled by :math:`r` = ``wd_ratio``; otherwise :math:`r = 1`. Biases and norm
    weights (1-D) are never projected.

    Advice from the authors: keep the learning rate and weight decay of the Adam setup it
    replaces (1e-2 decay for ImageNet, or 0 to start); ``delta=0.1`` and ``wd_ratio=0.1`` work
    across tasks, ``delta=0`` turns the projection off. The projection costs a few reductions per
    weight (about 8% more training time in the authors' measurements).

    Differences from the official code: channels_last weights work (the official ``.view``
    raises); arguments are validated (the official code checks none).

    bf16 parameters: the moments are computed in float32 and rounded to bf16, as they are stored,
    before the update reads them (the official code computes all of it in bf16). The projection's
    sums need the whole update before it can be applied, so the update is read twice: the compiled
    step's second pass reads the stored moments back, or, for weights of 2^16 to 2^21 elements, the
    update itself from a float32 scratch buffer (the compiled backend's CPU plugin). (fp16
    moments are not rounded first: fp16's range would flush small second moments to zero and the
    update would blow up.)

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        eps: Added to the denominator and to the norms (default: 1e-8).
        weight_decay: Decoupled decay :math:`\lambda` (default: 0).
        delta: Projection threshold :math:`\delta` (default: 0.1).
        wd_ratio: Decay multiplier for projected weights (default: 0.1).
        nesterov: Nesterov momentum in the update (default: False).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
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
        _check_projection(group)

    def sharded_statistics(self, plans: list[Plan]) -> contextlib.AbstractContextManager[None]:
        return sharded_projections(self, plans)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return 0.0, 0.0  # decoupled and scaled by the projection, in the rule

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return {
            "beta1": beta1,
            "beta1_comp": 1.0 - beta1,
            "beta2": beta2,
            "beta2_comp": 1.0 - beta2,
            "bias_correction2_sqrt": math.sqrt(1.0 - beta2**step),
            "neg_step_size": -lr / (1.0 - beta1**step),
            "decay": lr * group["weight_decay"],
            "eps": group["eps"],
            "delta": group["delta"],
            "wd_ratio": group["wd_ratio"],
            "nesterov": group["nesterov"],
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        # an optional third state takes the unprojected update, which a runner may then read
        # back instead of recomputing it (the compiled CPU plugin's scratch buffer)
        exp_avg, exp_avg_sq, *scratch = state
        exp_avg = ops.add_(ops.mul_(exp_avg, s.beta1), grad, alpha=s.beta1_comp)
        exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta2), grad, grad, value=s.beta2_comp)
        # low precision: the update reads the moments as stored (see the class docstring)
        exp_avg, exp_avg_sq = ops.as_stored_bf16(exp_avg, param), ops.as_stored_bf16(exp_avg_sq, param)
        denom = ops.add_(ops.div_(ops.sqrt(exp_avg_sq), s.bias_correction2_sqrt), s.eps)
        if s.nesterov:
            update = ops.add_(ops.mul(exp_avg, s.beta1), ops.mul(grad, s.beta1_comp))
            update = ops.div_(update, denom)
        else:
            update = ops.div(exp_avg, denom)
        staged = tuple(update for _ in scratch)
        update, ratio = ops.project(param, grad, update, s.delta, s.wd_ratio, s.eps)
        rate = ops.each(ratio, lambda r: s.decay * r)

        def step_into(target: Any) -> Any:
            if not is_set(s.decay):
                return ops.add_(target, update, alpha=s.neg_step_size)
            return _decayed_step(ops, param, target, rate, update, s.neg_step_size)

        return step_into, (exp_avg, exp_avg_sq, *staged)


class SGDP(Optimizer):
    r"""SGDP (Heo et al., ICLR 2021), following the official adamp 0.3.0.

    Example::

        optimizer = fastoptim.SGDP(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    .. math::

        b &\leftarrow \mu b + (1 - \tau) g \qquad \text{(also at the first step)} \\
        u &= g + \mu b \ \text{(nesterov)}, \quad u = b \ \text{otherwise} \\
        (u, r) &= \Pi(\theta, g, u) \\
        \theta &\leftarrow \theta\,\Big(1 - \frac{\gamma\lambda r}{1 - \mu}\Big) - \gamma u

    with :math:`\Pi` and :math:`r` as in :class:`AdamP`. Keep the learning rate, momentum and
    weight decay of the SGD setup it replaces.

    Unlike :class:`~fastoptim.SGD` (torch), the first step sets :math:`b = (1 - \tau) g`, and
    weight decay is decoupled and divided by :math:`1 - \mu`. Without nesterov the projection is
    applied to the momentum buffer itself, as in the official code (timm and pytorch-optimizer
    project a copy and drift from it by a few percent).

    Differences from the official code: channels_last weights work; arguments are validated
    (``momentum`` must be below 1, where the official decay divides by zero).

    bf16 parameters: the momentum buffer is computed in float32 and rounded to bf16, as it is
    stored, before the update reads it (as :class:`AdamP`'s moments).

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma`; required.
        momentum: :math:`\mu` in [0, 1) (default: 0).
        dampening: :math:`\tau` in [0, 1) (default: 0).
        weight_decay: Decoupled decay :math:`\lambda` (default: 0).
        nesterov: Nesterov momentum (default: False).
        eps: Guards the norms (default: 1e-8).
        delta: Projection threshold :math:`\delta` (default: 0.1).
        wd_ratio: Decay multiplier for projected weights (default: 0.1).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("momentum",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
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
        _check_projection(group)

    def sharded_statistics(self, plans: list[Plan]) -> contextlib.AbstractContextManager[None]:
        return sharded_projections(self, plans)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return 0.0, 0.0  # decoupled, divided by 1 - momentum and scaled by the projection

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        return {
            "momentum": group["momentum"],
            "grad_weight": 1.0 - group["dampening"],
            "neg_lr": -lr,
            "decay": lr * group["weight_decay"],
            "momentum_comp": 1.0 - group["momentum"],
            "eps": group["eps"],
            "delta": group["delta"],
            "wd_ratio": group["wd_ratio"],
            "nesterov": group["nesterov"],
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        (buffer,) = state
        buffer = ops.add_(ops.mul_(buffer, s.momentum), grad, alpha=s.grad_weight)
        buffer = ops.as_stored_bf16(buffer, param)  # low precision: as stored (see the class docstring)
        update = ops.add_(ops.mul(buffer, s.momentum), grad) if s.nesterov else buffer
        update, ratio = ops.project(param, grad, update, s.delta, s.wd_ratio, s.eps)
        rate = ops.each(ratio, lambda r: s.decay * r / s.momentum_comp)

        def step_into(target: Any) -> Any:
            if not is_set(s.decay):
                return ops.add_(target, update, alpha=s.neg_lr)
            return _decayed_step(ops, param, target, rate, update, s.neg_lr)

        # as officially, the projection also rewrites the momentum buffer when it is the update
        return step_into, (buffer if s.nesterov else update,)
