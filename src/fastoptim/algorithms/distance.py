"""Shared pieces of the distance-estimating optimizers (D-Adaptation and Prodigy)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from fastoptim.optimizer import Optimizer
from fastoptim.validation import check_bool, check_positive

logger = logging.getLogger("fastoptim")


def max_lr_of(optimizer: Optimizer, hint: str = "") -> float:
    """The largest group lr; every group's lr must be it or 0, as the official code requires.

    Raises:
        RuntimeError: A group's lr is neither the largest nor 0 (with the official message).
    """
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    lr = max(lrs)
    if any(value not in (lr, 0.0) for value in lrs):
        raise RuntimeError(
            "Setting different lr values in different parameter groups is only supported for values of 0"
            + hint
        )
    return lr


def first_group_dlr(optimizer: Optimizer) -> float:
    """``d * lr`` of the first group: the step scale of DAdaptAdaGrad and DAdaptAdan."""
    first = optimizer.param_groups[0]
    return first["d"] * float(first["lr"])


def scaled(value: Any, factor: float) -> Any:
    """``factor * value`` in float64 (0-d tensor, or a list of them), as the official host sums."""
    if isinstance(value, list):
        return [v.to(torch.float64) * factor for v in value]
    return value.to(torch.float64) * factor


def primal_average_step(ops: Any, param: Any, z: Any, averaging: float, replaces: bool = False) -> Any:
    """The ``step_into`` of primal averaging: ``p ← (1 - c) p + c z`` (``p ← z`` when ``c == 1``).

    On the parameter itself this is the official ``p.mul_(1 - c).add_(z, alpha=c)``; on a Kahan
    buffer or a float32 copy it adds ``c (z - p)``.

    With ``replaces`` (momentum 0, so ``c == 1``) the parameter itself is set to ``z`` without
    being read: the official ``0 · p + z`` is ``z`` for every finite ``p`` (an infinite or NaN
    parameter becomes NaN there, ``z`` here). A write that reads nothing before it lets the
    compiled step stream it to memory (:mod:`~fastoptim.runners.compiled.cpu_codegen.streaming_stores`).
    """

    def step_into(target: Any) -> Any:
        if target is param and replaces:
            return z
        if target is param:
            return ops.add_(ops.mul_(target, 1 - averaging), z, alpha=averaging)
        return ops.add_(target, ops.sub(z, param), alpha=averaging)

    return step_into


def finalize_weighted_numerator(optimizer: Optimizer, sums: list[float] | None, growth_rate: float) -> bool:
    """The D-Adaptation Adam/Lion estimate from the step's sums ``[A, L]``.

    ``N = sqrt(beta2) * N + (1 - sqrt(beta2)) * A`` and ``d = max(d, min(N / ((1 - sqrt(beta2)) L),
    d * growth_rate))``; ``d``, ``numerator_weighted`` and ``k`` go into every group. With
    ``L == 0`` nothing is stored (as officially).

    Returns:
        False when ``L == 0``.
    """
    numerator_sum, l1 = sums if sums is not None else (0.0, 0.0)
    first = optimizer.param_groups[0]
    sqrt_beta2 = first["betas"][1] ** 0.5
    numerator = sqrt_beta2 * first["numerator_weighted"] + (1 - sqrt_beta2) * numerator_sum
    if l1 == 0:
        return False
    d = d_hat = first["d"]
    if max_lr_of(optimizer) > 0.0:
        d_hat = numerator / ((1 - sqrt_beta2) * l1)
        d = max(d, min(d_hat, d * growth_rate))
    if first["log_every"] > 0 and first["k"] % first["log_every"] == 0:
        logger.info(
            "%s k=%d d_hat=%.3e d=%.3e sk_l1=%.1e numerator=%.1e",
            type(optimizer).__name__,
            first["k"],
            d_hat,
            d,
            l1,
            numerator,
        )
    for group in optimizer.param_groups:
        group["numerator_weighted"] = numerator
        group["d"] = d
        group["k"] += 1
    return True


def check_distance_group(group: dict[str, Any]) -> None:
    """Checks the options the distance estimators share, where the class has them.

    ``d0 > 0``, ``growth_rate >= 1``, ``log_every`` an integer >= 0, and the boolean flags.
    """
    check_positive(group["d0"], "d0")
    if "growth_rate" in group and not group["growth_rate"] >= 1.0:
        raise ValueError(f"growth_rate must be >= 1, got {group['growth_rate']}")
    log_every = group.get("log_every", 0)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"log_every must be an integer >= 0, got {log_every!r}")
    for flag in ("decouple", "use_bias_correction", "safeguard_warmup", "fsdp_in_use", "no_prox"):
        if flag in group:
            check_bool(group[flag], flag)
