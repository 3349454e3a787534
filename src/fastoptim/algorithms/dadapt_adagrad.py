"""D-Adaptation AdaGrad: dual-averaged AdaGrad with a learning rate estimated from the distance."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from fastoptim.algorithms.distance import check_distance_group, first_group_dlr, logger, primal_average_step
from fastoptim.optimizer import Optimizer, RuleResult, hyperparameters
from fastoptim.runners import Bucket
from fastoptim.validation import check_positive, check_unit_interval

#: The official initial value of the squared-gradient sum, whatever ``eps`` is.
ALPHA_INIT = 1e-6


def _difference(new: Any, old: Any) -> Any:
    """``new - old`` in float64 (0-d tensors, or lists of them): one step's change of a sum."""
    if isinstance(new, list):
        return [a.to(torch.float64) - b.to(torch.float64) for a, b in zip(new, old, strict=True)]
    return new.to(torch.float64) - old.to(torch.float64)


def _values_at(dense: Tensor, grad: Tensor) -> Tensor:
    """The entries of ``dense`` where the coalesced sparse ``grad`` has values."""
    return dense.sparse_mask(grad).coalesce()._values()


def _sparse_like(grad: Tensor, values: Tensor) -> Tensor:
    return torch.sparse_coo_tensor(grad.indices(), values, grad.shape, check_invariants=False)


class DAdaptAdaGrad(Optimizer):
    r"""D-Adaptation AdaGrad (Defazio & Mishchenko, ICML 2023), following dadaptation 3.2.

    Example::

        optimizer = fastoptim.DAdaptAdaGrad(model.parameters())  # lr=1.0: d is estimated
        loss.backward(); optimizer.step(); optimizer.zero_grad()

    Dual averaging with AdaGrad's diagonal scaling. With :math:`\delta = d\gamma` (:math:`\gamma`
    = the first group's lr), :math:`\alpha` the running sum of squared gradients (initialised to
    1e-6), :math:`D = \sqrt{\alpha} + \epsilon` and :math:`x_0` the initial parameters:

    .. math::

        \alpha &\leftarrow \alpha + g^2, \qquad s \leftarrow s + \delta g, \qquad
        G \leftarrow G + \delta^2 \textstyle\sum g^2 / D \\
        Q &\leftarrow Q + \Delta\big(\textstyle\sum s^2 / D\big), \qquad
        L \leftarrow L + \Delta \lVert s \rVert_1 \\
        \hat d &= (Q - G) / L, \qquad
        d \leftarrow \max\big(d,\ \min(\hat d,\ d \cdot \text{growth\_rate})\big) \\
        z &= x_0 - s / D, \qquad \theta \leftarrow (1 - c)\,\theta + c\, z \quad (c = 1 - \text{momentum})

    :math:`Q` and :math:`L` are kept as running totals of each step's change, as officially
    (``sksq_weighted``, ``skl1``, ``gsq_weighted`` in every param group). Sparse gradients
    (``nn.Embedding(sparse=True)``) update only the rows they touch, with :math:`D =
    \sqrt{\alpha + \epsilon}` (eps inside the root, as officially), no weight decay and no
    momentum, and need one more buffer (``weighted_sk``).

    Advice from the authors: ``lr=1.0`` with the usual schedule; the Adam and SGD variants are
    usually better (dadaptation#29: AdaGrad learns little on LoRA).

    Differences from the official code: ``p.grad`` is not modified by weight decay; gradient
    release is refused; the sums are read once per step (the official code calls ``.item()``
    four times per parameter); ``momentum`` must lie in [0, 1); with momentum 0 the parameter is
    set to :math:`z` (officially :math:`0 \cdot \theta + z`, the same for every finite
    :math:`\theta`; an infinite or NaN parameter becomes NaN there), which the compiled step
    writes without reading the parameter. As officially, ``lr``,
    ``momentum``, ``growth_rate`` and ``log_every`` come from the first group, ``eps`` and
    ``weight_decay`` are per group, and an all-zero gradient leaves ``d`` unchanged.

    The official code sums :math:`s^2 / D` and :math:`|s|` before and after each step's change
    and adds the difference to :math:`Q` and :math:`L`. Before the change they are the sums the
    last step ended with, unless something has touched the states since, so a step whose states
    are as the last informative step left them (a one-pass step, see
    :attr:`fastoptim.Optimizer.ONE_PASS`) takes them from there instead of recomputing them: one
    square root, one division and two sums per element fewer (about 10% of a compiled step of a
    20M-parameter model on the development CPU). Steps with sparse gradients, and the first
    step after any change, sum both as officially.

    Low precision: the states keep the parameter dtype, as officially, and dominate the error
    in bf16; the position is recomputed from ``x0`` and ``s`` at every step, so Kahan summation
    of the parameter write does not make it more accurate.

    Args:
        params: Tensors to optimise or dicts defining parameter groups.
        lr: Learning-rate multiplier :math:`\gamma` (default: 1.0).
        momentum: Primal averaging in [0, 1) (default: 0).
        log_every: Log d every this many steps; 0 disables (default: 0).
        weight_decay: L2 coefficient added to dense gradients (default: 0.0).
        eps: Added to :math:`\sqrt{\alpha}` (default: 1e-6).
        d0: Initial distance estimate (default: 1e-6).
        growth_rate: Largest factor by which :math:`d` may grow per step (default: inf).
        kahan_sum, backend, foreach, gradient_release, shard_group, maximize, stochastic_rounding: As for
            every fastoptim optimizer (:class:`fastoptim.Optimizer`).
    """

    REDUCES = True
    ONE_PASS = True
    STATE_KEYS = ("alphak", "sk", "x0")
    SPARSE_STATE_KEYS = ("weighted_sk",)
    #: The skip (a zero l1 total) and the old sums a one-pass step reuses depend on these alone.
    REDUCTION_STATE_KEYS = ("alphak", "sk")
    #: The weighted and l1 sums of ``s`` the last step ended with (float64), where it kept them.
    _new_sums: tuple[float, float] | None = None
    #: Whether this step's reduction takes its old sums from :attr:`_new_sums`.
    _old_sums_known = False
    #: Whether this step has sparse gradients.
    _sparse_step = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1.0,
        momentum: float = 0.0,
        log_every: int = 0,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
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
        super().__init__(params, **arguments, d=d0, k=0, gsq_weighted=0.0, sksq_weighted=0.0, skl1=0.0)

    def check_group(self, group: dict[str, Any]) -> None:
        check_unit_interval(group["momentum"], "momentum")
        check_positive(group["eps"], "eps")
        check_distance_group(group)

    def init_state(self, group: dict[str, Any], param: Tensor, key: str) -> Tensor:
        if key == "alphak":
            return torch.full_like(param, ALPHA_INIT, memory_format=torch.preserve_format)
        if key == "x0":
            return param.detach().clone(memory_format=torch.preserve_format)
        return super().init_state(group, param, key)

    def global_scalars(self) -> dict[str, Any]:
        momentum = self.param_groups[0]["momentum"]
        return {"dlr": first_group_dlr(self), "averaging": 1.0 - momentum, "replaces": momentum == 0}

    def scalars(self, group: dict[str, Any], step: int, lr: float) -> dict[str, Any]:
        return {"eps": group["eps"]}

    def accumulate(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> tuple[tuple[Any, ...], tuple[Any, ...], None]:
        if not isinstance(grad, list) and grad.is_sparse:
            return self._accumulate_sparse(grad, state, s)
        alpha, sums, x0 = state
        if not s.old_sums_known:
            old_weighted = ops.div_sum(ops.square(sums), ops.add_(ops.sqrt(alpha), s.eps))
            old_l1 = ops.abs_sum(sums)
        alpha = ops.add_(alpha, ops.square(grad))
        denom = ops.add_(ops.sqrt(alpha), s.eps)
        grad_sq = ops.div_sum(ops.square(grad), denom)
        sums = ops.add_(sums, grad, alpha=s.dlr)
        weighted = ops.div_sum(ops.square(sums), denom)
        l1 = ops.abs_sum(sums)
        if s.old_sums_known:
            return (weighted, l1, grad_sq), (alpha, sums, x0), None
        changes = (_difference(weighted, old_weighted), _difference(l1, old_l1))
        return (*changes, grad_sq, weighted, l1), (alpha, sums, x0), None

    @staticmethod
    def _accumulate_sparse(
        grad: Tensor, state: tuple[Tensor, ...], s: SimpleNamespace
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], None]:
        """The official sparse bookkeeping, on the rows the gradient touches."""
        alpha, sums, x0, weighted_sk = state
        grad = grad.coalesce()
        values = grad._values()
        old_l1 = _values_at(sums, grad).abs().sum()
        sums.add_(grad, alpha=s.dlr)
        sums_values = _values_at(sums, grad)
        alpha_values = _values_at(alpha, grad)
        old_weighted = _values_at(weighted_sk, grad)
        alpha_next = alpha_values + values * values
        alpha.add_(_sparse_like(grad, alpha_next - alpha_values))
        denom = torch.sqrt(alpha_next + s.eps)
        grad_sq = (values * values).div(denom).sum()
        weighted = (sums_values * sums_values).div(denom)
        weighted_sk.add_(_sparse_like(grad, weighted - old_weighted))
        partials = (
            _difference(weighted.sum(), old_weighted.sum()),
            _difference(sums_values.abs().sum(), old_l1),
            grad_sq,
            # its new sums: unused, as a step with sparse gradients does not keep them (begin_reduction)
            *torch.zeros(2, dtype=torch.float64, device=values.device).unbind(),
        )
        return partials, (alpha, sums, x0, weighted_sk), None

    def begin_reduction(self, buckets: list[Bucket], one_pass: bool) -> None:
        self._sparse_step = any(bucket.sparse for bucket in buckets)
        self._old_sums_known = one_pass and not self._sparse_step and self._new_sums is not None
        for bucket in buckets:
            bucket.scalars.old_sums_known = self._old_sums_known

    def _changes(self, sums: list[float] | None) -> tuple[float, float, float]:
        """This step's changes of the weighted and l1 sums of ``s``, and its weighted sum of g²."""
        if sums is None:
            self._new_sums = None
            return 0.0, 0.0, 0.0
        if self._old_sums_known:
            weighted, l1, grad_sq = sums
            last_weighted, last_l1 = self._new_sums
            self._new_sums = (weighted, l1)
            return weighted - last_weighted, l1 - last_l1, grad_sq
        weighted_change, l1_change, grad_sq, weighted, l1 = sums
        self._new_sums = None if self._sparse_step else (weighted, l1)
        return weighted_change, l1_change, grad_sq

    def finalize(self, sums: list[float] | None) -> dict[str, Any] | None:
        weighted_change, l1_change, grad_sq = self._changes(sums)
        first = self.param_groups[0]
        weighted = first["sksq_weighted"] + weighted_change
        l1 = first["skl1"] + l1_change
        if l1 == 0:
            return None  # no gradient information yet (as officially, nothing is stored)
        dlr = first_group_dlr(self)
        gsq_weighted = first["gsq_weighted"] + dlr * dlr * grad_sq
        d = d_hat = first["d"]
        if float(first["lr"]) > 0.0:
            d_hat = (weighted - gsq_weighted) / l1
            d = max(d, min(d_hat, d * first["growth_rate"]))
        if first["log_every"] > 0 and first["k"] % first["log_every"] == 0:
            logger.info(
                "DAdaptAdaGrad k=%d d_hat=%.3e d=%.3e sksq_weighted=%.1e skl1=%.1e gsq_weighted=%.1e",
                first["k"],
                d_hat,
                d,
                weighted,
                l1,
                gsq_weighted,
            )
        for group in self.param_groups:
            group.update(gsq_weighted=gsq_weighted, skl1=l1, sksq_weighted=weighted, d=d)
            group["k"] += 1
        return {}

    def update(
        self, ops: Any, param: Any, grad: Any, state: tuple[Any, ...], s: SimpleNamespace
    ) -> RuleResult:
        if not isinstance(grad, list) and grad.is_sparse:
            return self._update_sparse(param, grad, state, s)
        alpha, sums, x0 = state
        z = ops.sub(x0, ops.div(sums, ops.add_(ops.sqrt(alpha), s.eps)))
        return primal_average_step(ops, param, z, s.averaging, s.replaces), state

    @staticmethod
    def _update_sparse(
        param: Tensor, grad: Tensor, state: tuple[Tensor, ...], s: SimpleNamespace
    ) -> RuleResult:
        """Moves the touched entries to ``x0 - s / sqrt(alpha + eps)``; the others stay."""
        alpha, sums, x0, _ = state
        grad = grad.coalesce()
        target_values = _values_at(x0, grad) - _values_at(sums, grad).div(
            torch.sqrt(_values_at(alpha, grad) + s.eps)
        )

        def step_into(target: Tensor) -> Tensor:
            return target.add_(_sparse_like(grad, target_values - _values_at(param, grad)))

        return step_into, state
