"""ADOPT: Adam with the current gradient decorrelated from its second-moment estimate."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

from torch import Tensor

from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_bool, check_nonnegative


def default_clip(step: float) -> float:
    """The official clip bound ``step ** 0.25`` (a named function, so the optimizer pickles)."""
    return step**0.25


class ADOPT(Optimizer):
    r"""ADOPT (Taniguchi et al., NeurIPS 2024), following the official torch-adopt 0.1.0.

    Example::

        optimizer = fastoptim.ADOPT(model.parameters(), lr=1e-3)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    With :math:`n` the number of earlier calls for this parameter:

    .. math::

        n = 0:\quad & v \leftarrow g^2 \quad\text{(nothing else: no update, no decay)} \\
        n \ge 1:\quad & \hat g = \operatorname{clip}\big(g / \max(\sqrt{v}, \epsilon),\ c(n)\big) \\
        & m \leftarrow m + (1 - \beta_1)(\hat g - m) \\
        & \theta \leftarrow \theta - \gamma\, m \\
        & v \leftarrow \beta_2 v + (1 - \beta_2)\, g^2

    The gradient is normalised by the *previous* second moment, which makes the update unbiased
    for any :math:`\beta_2` (the paper's convergence argument); :math:`\epsilon` floors
    :math:`\sqrt v` instead of being added to it. The clip :math:`c(n) = n^{1/4}` (``clip_lambda``)
    was added by the authors after the first release: without it, a gradient that is exactly 0 at
    the first call (zero-initialised layers) leaves :math:`v = 0` and the next gradient is divided
    by :math:`\epsilon`. ``clip_lambda=None`` gives the unclipped update.

    Advice from the authors: the defaults of Adam transfer; ADOPT tolerates a large
    :math:`\beta_2` (default 0.9999); warm-up helps where Adam needs it.

    Weight decay: L2 (:math:`g \leftarrow g + \lambda\theta`) by default, or with
    ``decouple=True`` AdamW-style :math:`\theta \leftarrow \theta - \gamma\lambda\theta` before each
    update (not at the first call).

    Differences from the official code: none in the maths. The first-call initialisation and the
    clip count are per parameter in every backend (the official foreach path uses the first
    tensor's step for the whole bucket, so a parameter that first gets a gradient late is divided
    by :math:`\epsilon` there); ``clip_lambda`` is, as officially, an optimizer attribute rather
    than a group option, so it is not in ``state_dict()``, but the default pickles. ``maximize``
    works as officially; ``capturable`` and ``differentiable`` are not supported; ``fused=True``
    raises.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.9999)).
        eps: Floor on :math:`\sqrt v` (default: 1e-6).
        clip_lambda: Clip bound as a function of the step count, or None (default: ``n ** 0.25``).
        weight_decay: Decay coefficient :math:`\lambda` (default: 0).
        decouple: Decoupled (AdamW-style) weight decay instead of L2 (default: False).
        fused: Only None or False are accepted (no fused kernel yet).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("exp_avg", "exp_avg_sq")
    COMPLEX = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.9999),
        eps: float = 1e-6,
        clip_lambda: Callable[[float], float] | None = default_clip,
        weight_decay: float = 0.0,
        decouple: bool = False,
        *,
        kahan_sum: bool | None = None,
        backend: str = "auto",
        foreach: bool | None = None,
        fused: bool | None = None,
        gradient_release: bool = False,
        shard_group: Any = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
    ) -> None:
        if clip_lambda is not None and not callable(clip_lambda):
            raise TypeError(f"clip_lambda must be a function of the step count or None, got {clip_lambda!r}")
        if fused:
            raise ValueError("fused=True is not available; use backend='loop' or 'foreach'")
        self.clip_lambda = clip_lambda
        arguments = hyperparameters(locals())
        del arguments["clip_lambda"], arguments["fused"]
        super().__init__(params, **arguments)

    PICKLED_ATTRIBUTES = ("clip_lambda",)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 2)
        check_nonnegative(group["eps"], "eps")
        check_bool(group["decouple"], "decouple")

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        # L2 goes through the machinery; decoupled decay is in the rule (skipped at the first call).
        return (0.0 if group["decouple"] else group["weight_decay"]), 0.0

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        previous_calls = float(step - 1)
        first = step == 1
        clip = None if first or self.clip_lambda is None else self.clip_lambda(previous_calls)
        decay = lr * group["weight_decay"] if group["decouple"] else 0.0
        return {
            "first": first,
            "clip": clip,
            "eps": group["eps"],
            "beta1_comp": 1.0 - beta1,
            "beta2": beta2,
            "beta2_comp": 1.0 - beta2,
            "neg_decay": -decay,
            "neg_lr": -lr,
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        exp_avg, exp_avg_sq = state
        if s.first:
            exp_avg_sq = ops.addcmul_(exp_avg_sq, grad, grad, value=1.0)
            return (lambda target: target), (exp_avg, exp_avg_sq)
        normed = ops.div(grad, ops.clamp_(ops.sqrt(exp_avg_sq), min=s.eps))
        if s.clip is not None:
            normed = ops.clamp_(normed, min=-s.clip, max=s.clip)
        exp_avg = ops.lerp_(exp_avg, normed, s.beta1_comp)
        exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta2), grad, grad, value=s.beta2_comp)

        def step_into(target: Any) -> Any:
            if is_set(s.neg_decay):
                target = ops.add_(target, param, alpha=s.neg_decay)
            return ops.add_(target, exp_avg, alpha=s.neg_lr)

        return step_into, (exp_avg, exp_avg_sq)
