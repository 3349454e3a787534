"""D-Adaptation SGD: dual averaging with a learning rate estimated from the distance travelled."""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from fastoptim.algorithms.distance import (
    check_distance_group,
    logger,
    max_lr_of,
    primal_average_step,
    scaled,
)
from fastoptim.distributed import local
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.validation import check_positive, check_unit_interval


class DAdaptSGD(Optimizer):
    r"""D-Adaptation SGD (Defazio & Mishchenko, ICML 2023), following dadaptation 3.2.

    Example::

        optimizer = fastoptim.DAdaptSGD(model.parameters(), momentum=0.9)  # lr=1.0: d is estimated
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    Dual averaging with step :math:`\delta = d\gamma / \lVert g_0 \rVert` (:math:`\gamma` = the
    largest group lr, :math:`g_0` the first gradient) and primal averaging for momentum
    :math:`\mu` (:math:`c = 1 - \mu`):

    .. math::

        N &\leftarrow N + \textstyle\sum \delta\,\langle g, s\rangle, \qquad
        s \leftarrow s + \delta\, g \\
        d &\leftarrow \max\big(d,\ \min(2N / \lVert s \rVert,\ d \cdot \text{growth\_rate})\big) \\
        z &= x_0 - s, \qquad \theta \leftarrow (1 - c)\,\theta + c\, z

    Advice from the authors: ``lr=1.0`` with the usual schedule; the SGD variant suits problems
    where SGD works (vision); weight decay multiplies the small adapted lr, so try 2-4x larger.

    Differences from the official code, each a bug there: an all-zero first gradient skips the
    step (the official code raises ZeroDivisionError, dadaptation#4); a largest lr of 0 (a
    schedule reaching 0) skips the update (the official 3.2 raises UnboundLocalError). Also:
    ``p.grad`` is not modified by weight decay; gradient release is refused; the sums are read
    once per step. As officially, the first-gradient norm leaves out weight decay, and
    ``momentum``, ``weight_decay`` and ``growth_rate`` come from the first group.

    With momentum 0 (the default) the parameter is set to :math:`z`, where the official code
    computes :math:`0 \cdot \theta + z`: the same for every finite :math:`\theta` (an infinite or
    NaN parameter becomes NaN there), and the compiled step writes the parameter without reading
    it, around the caches (:mod:`~fastoptim.runners.compiled.cpu_codegen.streaming_stores`).

    The state ``z`` is always :math:`x_0 - s` after a step and nothing reads it, so a step does
    not write it (a write-only stream of memory cost 9 of 22 ms in the compiled step of a
    20M-parameter model); :meth:`state_dict` fills it in, so checkpoints hold the official state.
    Read ``state_dict()``, not ``optimizer.state[p]["z"]``, for its current value.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        momentum: Primal averaging :math:`\mu` in [0, 1) (default: 0).
        weight_decay: L2 coefficient added to the gradient (default: 0).
        log_every: Log d every this many steps; 0 disables (default: 0).
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
    STATE_KEYS = ("z", "s", "x0")
    #: Whether a step can skip (a zero sum of s²) depends on s alone; x0 and z only move the update.
    REDUCTION_STATE_KEYS = ("s",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        log_every: int = 0,
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
        super().__init__(params, **arguments, d=d0, k=0, numerator_weighted=0.0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_unit_interval(group["momentum"], "momentum")
        check_distance_group(group)
        # set at the first step; there from the start, since a distributed checkpoint loads only
        # the keys a fresh optimizer's state dict has
        group.setdefault("g0_norm", 0.0)

    def init_state(self, group: dict[str, Any], param: Tensor, key: str) -> Tensor:
        if key in ("z", "x0"):
            return param.detach().clone()
        return super().init_state(group, param, key)

    def weight_decay_terms(self, group: dict[str, Any], lr: float) -> tuple[float, float]:
        return self.param_groups[0]["weight_decay"], 0.0

    def global_scalars(self) -> dict[str, Any]:
        first = self.param_groups[0]
        lr = max_lr_of(self)
        if first["k"] == 0:  # the first gradient's norm (without weight decay, as officially)
            grads = [
                local(p.grad)
                for g in self.param_groups
                if float(g["lr"]) > 0
                for p in g["params"]
                if p.grad is not None
            ]
            total = torch.stack([(g * g).sum().to(torch.float64) for g in grads]).sum() if grads else None
            if self.sharding is not None:  # every rank's shards (one all-reduce, on the first step)
                total = self.sharding.sum(total, torch.float64)
            g0_norm = math.sqrt(total.item()) if total is not None else 0.0
            if g0_norm == 0.0:
                return {"skip": True}
            for group in self.param_groups:
                group["g0_norm"] = g0_norm
        return {"skip": False, "dlr": first["d"] * lr / first["g0_norm"], "max_lr": lr}

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        momentum = self.param_groups[0]["momentum"]
        return {"active": lr > 0.0, "averaging": 1.0 - momentum, "replaces": momentum == 0}

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...] | None, tuple[Any, ...], None]:
        if s.skip or not s.active:
            return None, state, None
        z, sums, x0 = state
        numerator = scaled(ops.dot(grad, sums), s.dlr)
        sums = ops.add_(sums, grad, alpha=s.dlr)
        return (numerator, ops.square_sum(sums)), (z, sums, x0), None

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        numerator_sum, squares = sums if sums is not None else (0.0, 0.0)
        if squares == 0:
            return None  # no gradient information, or the largest lr is 0: no update
        first = self.param_groups[0]
        numerator = first["numerator_weighted"] + numerator_sum
        d = d_hat = first["d"]
        if max_lr_of(self) > 0.0:
            d_hat = 2 * numerator / math.sqrt(squares)
            d = max(d, min(d_hat, d * first["growth_rate"]))
        if first["log_every"] > 0 and first["k"] % first["log_every"] == 0:
            logger.info("DAdaptSGD k=%d d_hat=%.3e d=%.3e numerator=%.3e", first["k"], d_hat, d, numerator)
        for group in self.param_groups:
            group["numerator_weighted"] = numerator
            group["d"] = d
            group["k"] += 1
        return {}

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        z_buffer, sums, x0 = state
        z = ops.sub(x0, sums)  # not stored: see the class docstring
        return primal_average_step(ops, param, z, s.averaging, s.replaces), (z_buffer, sums, x0)

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """The state as :class:`torch.optim.Optimizer` saves it, with ``z`` = ``x0 - s`` filled in."""
        for state in self.state.values():
            if isinstance(state, dict) and "z" in state:  # (hooks may keep other entries there)
                torch.sub(state["x0"], state["s"], out=state["z"])
        return super().state_dict()
