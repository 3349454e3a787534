"""Adan: adaptive Nesterov momentum."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from fastoptim.distributed import local
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_bool, check_nonnegative


class Adan(Optimizer):
    r"""Adan (Xie et al., 2022), following the official sail-sg/Adan ``adan.py``.

    Example::

        optimizer = fastoptim.Adan(model.parameters(), lr=1e-3, weight_decay=0.02)
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    With the code's betas (:math:`\beta_i` = 1 - the paper's), group step :math:`k`, gradient
    :math:`g_k` (globally clipped when ``max_grad_norm > 0``) and :math:`\Delta_k = g_k - g_{k-1}`
    (0 at a parameter's first step):

    .. math::

        m_k &= \beta_1 m_{k-1} + (1 - \beta_1)\, g_k \\
        d_k &= \beta_2 d_{k-1} + (1 - \beta_2)\, \Delta_k \\
        n_k &= \beta_3 n_{k-1} + (1 - \beta_3)\, (g_k + \beta_2 \Delta_k)^2 \\
        D_k &= \sqrt{n_k / (1 - \beta_3^k)} + \epsilon \\
        \theta_k &= \Big(\theta_{k-1} - \frac{\gamma}{1 - \beta_1^k}\frac{m_k}{D_k}
                    - \frac{\gamma \beta_2}{1 - \beta_2^k}\frac{d_k}{D_k}\Big) \big/ (1 + \gamma\lambda)

    The last line is the proximal (default) weight decay; ``no_prox=True`` decays AdamW-style,
    :math:`\theta \leftarrow (1 - \gamma\lambda)\theta` before the update.

    Advice from the authors: Adan takes larger learning rates than Adam (about 5x, for example
    1e-3 to 2e-3 where AdamW used 3e-4), a weight decay around 0.02 (about 10x smaller than
    AdamW's), a warm-up about twice as long, and a larger :math:`\beta_3` (0.999) or gradient
    clipping (``max_grad_norm`` 0.1-1.0) if training turns unstable. ``restart_opt()`` resets the
    moments and the step count (the paper's restart strategy).

    Differences from the official code: the same maths with fewer passes over memory (lerp for
    :math:`m` and :math:`d`, :math:`\sqrt{1 - \beta_3^k}` folded into :math:`\epsilon` and the step
    sizes, :math:`g + \beta_2\Delta` and :math:`-g` in one pass each, no division by
    :math:`1 + \gamma\lambda` when :math:`\lambda = 0`, one ``addcdiv`` for both momentum terms):
    12 passes instead of 17, trajectories
    equal to float32 rounding (about 1e-7 after five steps on the golden runs); ``p.grad`` is
    left untouched (the official code clips it in place); every backend follows the Python maths
    (the official fused single-tensor CUDA kernel computes a different denominator and skips tail
    elements); ``foreach`` defaults to None
    (``backend="auto"``) rather than True, with the same trajectory; under gradient release the
    bias corrections count each parameter's own steps, which equals the group count when every
    parameter gets a gradient at every step. As officially, the clipping norm covers every group,
    uses the constructor's ``max_grad_norm`` (per-group values are ignored) and the last group's
    ``eps``, and the group step counts calls to ``step()``.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning rate :math:`\gamma` (default: 1e-3).
        betas: :math:`(\beta_1, \beta_2, \beta_3)` (default: (0.98, 0.92, 0.99)).
        eps: Added to the denominator (default: 1e-8).
        weight_decay: Decay coefficient :math:`\lambda` (default: 0).
        max_grad_norm: Clip all gradients together to this global norm; 0 disables (default: 0).
            Needs the whole step, so it cannot be combined with ``gradient_release=True``.
        no_prox: AdamW-style decay instead of the proximal step (default: False).
        fused: Only None or False are accepted (no fused kernel yet).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
    COMPLEX = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
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
        if fused:
            raise ValueError("fused=True is not available; use backend='loop' or 'foreach'")
        check_nonnegative(max_grad_norm, "max_grad_norm")
        if max_grad_norm > 0 and gradient_release:
            raise ValueError(
                "max_grad_norm > 0 clips by the norm of all gradients, which gradient_release=True "
                "cannot know while each parameter steps inside backward; use one or the other"
            )
        arguments = hyperparameters(locals())
        del arguments["fused"]
        super().__init__(params, **arguments)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 3)
        check_nonnegative(group["eps"], "eps")
        check_nonnegative(group["max_grad_norm"], "max_grad_norm")
        check_bool(group["no_prox"], "no_prox")
        # the group's step count, there from the start: a distributed checkpoint loads only the keys
        # a fresh optimizer's state dict has
        group.setdefault("step", 0)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return 0.0, 0.0  # proximal or AdamW-style, in the rule

    def begin_group(self, group: dict[str, Any]) -> None:
        group["step"] = group.get("step", 0) + 1

    def restart_opt(self) -> None:
        """Restarts: group steps to 0 and the three moments to zero (the previous gradient stays).

        At the next step the gradient difference starts again from 0.
        """
        for group in self.param_groups:
            group["step"] = 0
            for p in group["params"]:
                state = self.state.get(p)
                if not p.requires_grad or not state:
                    continue
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                    state[key].zero_()

    def global_scalars(self) -> dict[str, Any]:
        max_norm = self.defaults["max_grad_norm"]
        grads = [local(p.grad) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if max_norm <= 0 or (not grads and self.sharding is None):
            return {"clip": 1.0, "clipping": False}
        total = None
        if grads:
            total = torch.zeros(1, dtype=torch.float32, device=grads[0].device)
            for grad in grads:
                grad = torch.view_as_real(grad) if grad.is_complex() else grad  # |g|^2 of each element
                total.add_(grad.to(torch.float32).pow(2).sum().to(total.device))
        if self.sharding is not None:  # every rank's shards (one all-reduce)
            total = self.sharding.sum(total)
        norm = torch.sqrt(total)
        clip = torch.clamp(max_norm / (norm + self.param_groups[-1]["eps"]), max=1.0)
        return {"clip": clip.item(), "clipping": True}

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        beta1, beta2, beta3 = group["betas"]
        k = step if self.gradient_release else group["step"]
        # sqrt(n / b3) + eps == (sqrt(n) + eps * sqrt(b3)) / sqrt(b3): fold sqrt(b3) into the
        # step sizes and save a pass over n.
        bias_correction3_sqrt = math.sqrt(1.0 - beta3**k)
        return {
            "first": step == 1 or k == 1,
            "beta1_comp": 1.0 - beta1,
            "beta2": beta2,
            "beta2_comp": 1.0 - beta2,
            "beta3": beta3,
            "beta3_comp": 1.0 - beta3,
            "eps_hat": group["eps"] * bias_correction3_sqrt,
            "neg_step_size": -lr / (1.0 - beta1**k) * bias_correction3_sqrt,
            "diff_ratio": beta2 * (1.0 - beta1**k) / (1.0 - beta2**k),
            "no_prox": group["no_prox"],
            "decay": lr * group["weight_decay"],
        }

    def rule(self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace) -> RuleResult:
        exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad = state
        if s.first:  # no previous gradient: the difference starts at 0
            neg_pre_grad = ops.scale_into(neg_pre_grad, grad, -s.clip)
        if s.clipping:
            grad = ops.mul(grad, s.clip)
        # neg_pre_grad holds -g_{k-1}; it becomes the difference, then g + beta2 * difference
        # (in place: no temporaries), and finally -g_k for the next step.
        diff = ops.add_(neg_pre_grad, grad)  # g_k - g_{k-1}
        exp_avg = ops.lerp_(exp_avg, grad, s.beta1_comp)
        exp_avg_diff = ops.lerp_(exp_avg_diff, diff, s.beta2_comp)
        update = ops.add_scaled_into(diff, grad, diff, s.beta2)  # g_k + beta2 * diff
        exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta3), update, update, value=s.beta3_comp)
        neg_pre_grad = ops.scale_into(update, grad, -1.0)

        def step_into(target: Any) -> Any:
            denom = ops.add_(ops.sqrt(exp_avg_sq), s.eps_hat)
            # m / b1 + beta2 d / b2 in one tensor, then one addcdiv
            direction = ops.add(exp_avg, exp_avg_diff, alpha=s.diff_ratio)
            if target is not param and is_set(s.decay) and not s.no_prox:
                # proximal step as an increment: (p + u) / (1 + decay) - p
                moved = ops.addcdiv_(ops.to_fp32(param), direction, denom, value=s.neg_step_size)
                return ops.add_(target, ops.sub_(ops.div_(moved, 1.0 + s.decay), param))
            if is_set(s.decay) and s.no_prox:
                if target is param:
                    target = ops.mul_(target, 1.0 - s.decay)
                else:
                    target = ops.add_(target, param, alpha=-s.decay)
            target = ops.addcdiv_(target, direction, denom, value=s.neg_step_size)
            if is_set(s.decay) and not s.no_prox:
                target = ops.div_(target, 1.0 + s.decay)
            return target

        return step_into, (exp_avg, exp_avg_sq, exp_avg_diff, neg_pre_grad)
