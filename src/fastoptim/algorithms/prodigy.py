"""Prodigy: learning-rate-free Adam that estimates the distance to the solution."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from fastoptim.algorithms.distance import check_distance_group, max_lr_of, scaled
from fastoptim.distributed import is_dtensor
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.scalars import is_set
from fastoptim.validation import check_betas, check_positive, check_unit_interval


class Prodigy(Optimizer):
    r"""Prodigy (Mishchenko & Defazio, ICML 2024), following prodigyopt 1.1.2.

    Example::

        optimizer = fastoptim.Prodigy(model.parameters(), lr=1.0)  # keep lr=1.0; schedule it as usual
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    One distance estimate :math:`d` for all parameters, with step scale
    :math:`d\gamma` (:math:`\gamma` = the largest group lr; a group's lr is otherwise only an on/off
    switch and must be that value or 0). With :math:`\hat g`, :math:`\hat\theta` every
    ``slice_p``-th element of the flattened gradient and parameter, and :math:`x_0` the
    parameter's initial value:

    .. math::

        m &\leftarrow \beta_1 m + d(1 - \beta_1)\, g, \qquad
        v \leftarrow \beta_2 v + d^2 (1 - \beta_2)\, g^2 \\
        r &\leftarrow \beta_3 r + \tfrac{d}{d_0} d\gamma \sum \langle \hat g, x_0 - \hat\theta\rangle, \qquad
        s \leftarrow \beta_3 s + \tfrac{d}{d_0} d\gamma\, \hat g \\
        d &\leftarrow \max\big(d,\ d_{coef}\, r / \textstyle\sum \lVert s \rVert_1\big) \\
        \theta &\leftarrow \theta - d\gamma\, \frac{m}{\sqrt{v} + d\epsilon}

    (:math:`\beta_3 = \sqrt{\beta_2}` by default; ``growth_rate`` caps the growth of :math:`d` after
    its first increase; ``use_bias_correction`` scales :math:`d\gamma` by Adam's bias correction.)

    Advice from the authors: keep ``lr=1.0`` and schedule it as usual (cosine annealing over the
    whole run; avoid restarts, or use ``safeguard_warmup=True`` with warm-up or restarts); for
    diffusion models ``betas=(0.9, 0.99)``, ``safeguard_warmup=True``,
    ``use_bias_correction=True`` and ``weight_decay=0.01``; if :math:`d` stays small, raise ``d0``
    to 1e-5 or 1e-4. Weight decay is decoupled by default.

    Implementation: the two global sums are added up on the device and read once per step (the
    official code calls ``.item()`` twice per parameter), between a phase that reads what they
    need (:math:`g`, :math:`\theta`, :math:`x_0`, :math:`s`; it advances :math:`s`) and a phase
    that advances the moments and moves the parameters (:math:`g`, :math:`m`, :math:`v`,
    :math:`\theta`): eight tensors read per parameter instead of nine, and the moments read
    once. A step the official code skips (no gradient information) still advances the moments,
    as officially. ``d``, ``d_max``, ``d_numerator``, ``d_denom``,
    ``d_hat`` and ``k`` are in every param group after each step, as officially.

    Differences from the official code: with ``betas[0] == 0`` a group with lr 0 stays frozen (the
    official code moves it by about :math:`-d\gamma\, g / \epsilon`, since its :math:`v` is never
    accumulated); ``p.grad`` is not modified by coupled weight decay; gradient release is refused
    (the estimate needs every parameter's contribution before any update); the per-parameter
    ``step`` counts calls, also those where no update happens. Under FSDP2 the sums cover every
    rank without ``fsdp_in_use`` (the official code detects FSDP-1 only), and ``s`` and ``p0`` are
    kept shaped and sharded as the parameter (``slice_p`` must then be 1).

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        betas: :math:`(\beta_1, \beta_2)` (default: (0.9, 0.999)).
        beta3: Decay of the distance sums; None means :math:`\sqrt{\beta_2}` (default: None).
        eps: Added to the denominator, scaled by :math:`d` (default: 1e-8).
        weight_decay: Decay coefficient (default: 0).
        decouple: AdamW-style decay :math:`\theta \leftarrow \theta - d\gamma\lambda\theta`;
            False adds :math:`\lambda\theta` to the gradient (default: True).
        use_bias_correction: Adam's bias correction in the step scale (default: False).
        safeguard_warmup: Leave the lr out of the ``s`` sums, against overestimates during
            warm-up (default: False).
        d0: Initial distance estimate (default: 1e-6).
        d_coef: Multiplier of the estimate (default: 1.0).
        growth_rate: Largest factor by which :math:`d` may grow per step (default: inf).
        fsdp_in_use: With plain-tensor parameters, sum the statistics over the default process
            group, as officially (default: False). Not needed under FSDP2 (detected) or with
            ``shard_group``.
        slice_p: Estimate from every ``slice_p``-th element only, to save memory (default: 1).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    REDUCES = True
    UPDATE_ADVANCES_STATE = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
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
        super().__init__(params, **arguments, d=d0, d_max=d0, d_numerator=0.0, k=0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_betas(group["betas"], 2)
        if group["beta3"] is not None:
            check_unit_interval(group["beta3"], "beta3")
        check_positive(group["eps"], "eps")
        check_distance_group(group)
        check_positive(group["d_coef"], "d_coef")
        slice_p = group["slice_p"]
        if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
            raise ValueError(f"slice_p must be a positive integer, got {slice_p!r}")
        if slice_p > 1 and any(map(is_dtensor, group["params"])):
            raise ValueError(
                f"slice_p={slice_p} takes every slice_p-th element of each whole flattened parameter, "
                "which a rank's shard of a DTensor parameter cannot tell; use slice_p=1 under FSDP2"
            )

    def state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        if self.param_groups[0]["betas"][0] > 0:
            return ("exp_avg", "exp_avg_sq", "s", "p0")
        return ("exp_avg_sq", "s", "p0")

    def init_state(self, group: dict[str, Any], param: Tensor, key: str) -> Tensor:
        if is_dtensor(param) and key in ("s", "p0"):  # shaped and sharded as the parameter (slice_p 1)
            return torch.zeros_like(param) if key == "s" else param.detach().clone()
        if key not in ("s", "p0"):
            return super().init_state(group, param, key)
        sliced = param.detach().flatten()[:: group["slice_p"]]
        if key == "s":
            return torch.zeros_like(sliced)
        # p0: an all-zero parameter keeps a 0-d zero instead of a copy
        return sliced.clone() if param.any() else torch.zeros((), dtype=param.dtype, device=param.device)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        # coupled decay through the gradient; decoupled decay (scaled by d) in the update
        return (0.0 if group["decouple"] else group["weight_decay"]), 0.0

    def _beta3(self) -> float:
        first = self.param_groups[0]
        return math.sqrt(first["betas"][1]) if first["beta3"] is None else first["beta3"]

    def global_scalars(self) -> dict[str, Any]:
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        beta3 = self._beta3()
        k, d = first["k"], first["d"]
        lr = max_lr_of(self)
        correction = 1.0
        if first["use_bias_correction"]:
            correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
        return {
            "beta1": beta1,
            "beta2": beta2,
            "beta3": beta3,
            "d": d,
            "dlr": d * lr * correction,
            "max_lr": lr,
        }

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        return {
            "active": lr > 0.0,
            "eps": group["eps"],
            "d0": group["d0"],
            "slice_p": group["slice_p"],
            "safeguard_warmup": group["safeguard_warmup"],
            "neg_decay": -group["weight_decay"] if group["decouple"] else 0.0,
        }

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], None]:
        # only what the new d needs: the moments advance in the update phase, which reads the
        # gradient again instead of reading and writing them here and reading them again there
        if not s.active:
            return None, state, None
        *moments, sums, p0 = state
        d, dlr = s.d, s.dlr
        sliced_grad = ops.flat_slice(grad, s.slice_p)
        weight = (d / s.d0) * dlr
        # flat views: the states are flat, or shaped as a sharded parameter (see init_state)
        numerator = ops.dot_diff(sliced_grad, ops.flat_slice(p0, 1), ops.flat_slice(param, s.slice_p))
        sums_weight = (d / s.d0) * d if s.safeguard_warmup else weight
        flat_sums = ops.add_(ops.mul_(ops.flat_slice(sums, 1), s.beta3), sliced_grad, alpha=sums_weight)
        partial = scaled(numerator, weight)
        return (partial, ops.abs_sum(flat_sums)), (*moments, sums, p0), None

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        delta_numerator, denominator = sums if sums is not None else (0.0, 0.0)
        if denominator == 0:
            return None  # no gradient information yet: no update, k not advanced (as officially)
        first = self.param_groups[0]
        beta3 = self._beta3()
        d, d_max = first["d"], first["d_max"]
        numerator = first["d_numerator"] * beta3 + delta_numerator
        d_hat = first["d_coef"] * numerator / denominator
        if d == self.param_groups[-1]["d0"]:  # the first increase ignores growth_rate
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = min(d_max, d * first["growth_rate"])
        for group in self.param_groups:
            group.update(d_numerator=numerator, d_denom=denominator, d=d, d_max=d_max, d_hat=d_hat)
            group["k"] += 1
        return {"d_new": d}

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        # the moments advance with the old d, as in the official code's first loop
        *moments, sums, p0 = state
        d = s.d
        exp_avg = moments[0] if len(moments) == 2 else None
        exp_avg_sq = moments[-1]
        if s.active:
            if exp_avg is not None:
                exp_avg = ops.add_(ops.mul_(exp_avg, s.beta1), grad, alpha=d * (1 - s.beta1))
            exp_avg_sq = ops.addcmul_(ops.mul_(exp_avg_sq, s.beta2), grad, grad, value=d * d * (1 - s.beta2))
        new_state = (exp_avg, exp_avg_sq, sums, p0) if exp_avg is not None else (exp_avg_sq, sums, p0)

        def step_into(target: Any) -> Any:
            if is_set(s.neg_decay):
                target = ops.add_(target, param, alpha=s.neg_decay * s.dlr)
            if exp_avg is None and not s.active:  # frozen group (the official code moves it, see above)
                return target
            denom = ops.add_(ops.sqrt(exp_avg_sq), s.d_new * s.eps)
            if exp_avg is not None:
                return ops.addcdiv_(target, exp_avg, denom, value=-s.dlr)
            return ops.addcdiv_(target, grad, denom, value=-s.dlr * s.d_new)

        return step_into, new_state
