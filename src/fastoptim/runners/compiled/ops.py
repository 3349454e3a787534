"""The primitives for the compiled runner: functional, and scalars may be 0-d tensors.

Inside ``torch.compile`` every primitive is traced into one graph per tensor, which inductor fuses
into a single kernel; in-place primitives are functionalised, so "in place" only decides which
buffers the kernel writes. Scalars that change from step to step (learning rate, bias
corrections, distance estimates) arrive as 0-d tensors, so a new value does not
recompile: ``alpha``/``value`` keywords, which torch only accepts as Python numbers, become
multiplications or fused multiply-adds (below), and ``lerp`` weights are cast to the tensor's
dtype, as torch casts a Python weight. ``lerp`` is written out with torch's formula for
``|w| < 0.5``: torch's two-sided formula puts a branch on the weight into every element of the
kernel.

Roundings follow torch's CPU kernels, so that float64 steps with neither a square root (eager
torch's is not always correctly rounded) nor a reduction equal the loop runner's exactly: ``add``
with ``alpha``, ``addcmul`` and ``lerp`` round once for a product and a sum (a fused multiply-add,
``torch.ops.prims.fma``, which inductor compiles to one), ``addcdiv`` computes
``x + (value a) / b``. Inductor does not contract any other product and sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fastoptim.stochastic_rounding import round_to_bf16

# inductor's fused multiply-add, torch.ops.prims.fma, is registered by this module (a rule may be
# traced before anything else imported inductor); without it, products and sums round twice.
try:
    from torch._inductor import inductor_prims
except ImportError:  # pragma: no cover
    inductor_prims = None

Scalar = float | Tensor


@functools.cache
def _keeps_round_trips() -> bool:
    """Whether inductor keeps a float32 -> bf16 -> float32 round trip under ``emulate_precision_casts``.

    torch 2.13 does; torch 2.11's joint-graph pass drops it as a pointless conversion. (Imported
    here, when a step is traced, not with fastoptim: the pass's module takes seconds to import.)
    Where this cannot be told, the answer is False, and the rounding is done on the bits, which is
    right either way.
    """
    try:
        from torch._inductor.fx_passes import joint_graph
    except ImportError:  # pragma: no cover - a torch that moved the pass
        return False
    return hasattr(joint_graph, "_is_lossless_fp_widening_cast")


def _scaled(y: Tensor | float, alpha: Scalar) -> Tensor | float:
    if isinstance(alpha, Tensor) or (isinstance(alpha, float) and alpha != 1.0):
        return y * alpha
    return y


def _fma(a: Tensor | Scalar, b: Tensor | Scalar, c: Tensor) -> Tensor:
    """``a * b + c`` rounded once, in the dtype torch's type promotion gives ``c + a * b``.

    0-d tensors (scalars) do not promote, as in torch: they are cast to that dtype.
    """
    tensors = [t for t in (a, b, c) if isinstance(t, Tensor) and t.ndim > 0]
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    shape = tensors[0].shape

    def operand(value: Tensor | Scalar) -> Tensor:
        if not isinstance(value, Tensor):
            return c.new_full(shape, value, dtype=dtype)
        return value.to(dtype).expand(shape)

    if inductor_prims is None:  # pragma: no cover
        return operand(a) * operand(b) + operand(c)
    return torch.ops.prims.fma(operand(a), operand(b), operand(c))


def _bf16_rounded_by_bits(x: Tensor) -> Tensor:
    """Float32 ``x`` rounded to bf16 (to nearest, ties to even) in integer arithmetic on its bits.

    For a torch whose inductor drops ``x.to(bf16).to(float32)``; NaN stays NaN.
    """
    bits = x.view(torch.int32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) & -65536).view(torch.float32)
    return torch.where(torch.isnan(x), x, rounded)


def _plus_scaled(x: Tensor, y: Tensor | Scalar, alpha: Scalar) -> Tensor:
    """``x + alpha * y`` as torch's ``add(x, y, alpha=alpha)`` computes it."""
    if isinstance(alpha, float) and alpha == 1.0:
        return x + y
    if not isinstance(y, Tensor) or y.ndim == 0:
        return x + y * alpha
    return _fma(y, alpha, x)


class CompiledOps:
    """:class:`~fastoptim.runners.ops.TensorOps`'s primitives, written for ``torch.compile``."""

    sub_ = staticmethod(Tensor.sub_)
    mul_ = staticmethod(Tensor.mul_)
    sign_ = staticmethod(Tensor.sign_)
    div_ = staticmethod(Tensor.div_)
    copy_ = staticmethod(Tensor.copy_)
    sub = staticmethod(torch.sub)
    neg = staticmethod(torch.neg)
    stochastic_round = staticmethod(round_to_bf16)
    mul = staticmethod(torch.mul)
    sqrt = staticmethod(torch.sqrt)
    div = staticmethod(torch.div)

    @staticmethod
    def each(value: Any, function: Callable[[Any], Any]) -> Any:
        return function(value)

    @staticmethod
    def add_(x: Tensor, y: Tensor | Scalar, *, alpha: Scalar = 1.0) -> Tensor:
        return x.copy_(_plus_scaled(x, y, alpha))

    @staticmethod
    def add(x: Tensor, y: Tensor | Scalar, *, alpha: Scalar = 1.0) -> Tensor:
        return _plus_scaled(x, y, alpha)

    @staticmethod
    def lerp_(x: Tensor, y: Tensor, weight: Scalar) -> Tensor:
        return x.copy_(_fma(weight, y - x, x))

    @staticmethod
    def lerp(x: Tensor, y: Tensor, weight: Scalar) -> Tensor:
        return _fma(weight, y - x, x)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, *, value: Scalar = 1.0) -> Tensor:
        return x.copy_(_fma(_scaled(a, value), b, x))

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, *, value: Scalar = 1.0) -> Tensor:
        return x.add_(_scaled(a, value) / b)

    @staticmethod
    def clamp_(x: Tensor, min: Scalar | None = None, max: Scalar | None = None) -> Tensor:
        return x.clamp_(min=min, max=max)

    @staticmethod
    def scale_into(dst: Tensor, x: Tensor, scalar: Scalar) -> Tensor:
        return x * scalar

    @staticmethod
    def add_scaled_into(dst: Tensor, x: Tensor, y: Tensor, alpha: Scalar) -> Tensor:
        return _plus_scaled(x, y, alpha)

    @staticmethod
    def to_fp32(x: Tensor) -> Tensor:
        return x.float()

    @staticmethod
    def as_stored_bf16(x: Tensor, like: Tensor) -> Tensor:
        if like.dtype != torch.bfloat16 or x.dtype == like.dtype:
            return x
        if not _keeps_round_trips():
            return _bf16_rounded_by_bits(x)
        return x.to(like.dtype).to(x.dtype)

    @staticmethod
    def flat_slice(x: Tensor, step: int) -> Tensor:
        return x.flatten()[::step]

    @staticmethod
    def dot(x: Tensor, y: Tensor) -> Tensor:
        return (x * y).sum()

    @staticmethod
    def dot_diff(x: Tensor, y: Tensor, z: Tensor) -> Tensor:
        return (x * (y - z).to(x.dtype)).sum()

    @staticmethod
    def abs_sum(x: Tensor) -> Tensor:
        return x.abs().sum()

    @staticmethod
    def square(x: Tensor) -> Tensor:
        return x * x

    @staticmethod
    def div_sum(x: Tensor, y: Tensor) -> Tensor:
        return (x / y).sum()

    @staticmethod
    def square_sum(x: Tensor) -> Tensor:
        return (x * x).sum()

    @staticmethod
    def project(
        param: Tensor, grad: Tensor, update: Tensor, delta: Scalar, wd_ratio: Scalar, eps: Scalar
    ) -> tuple[Tensor, Scalar]:
        r"""AdamP's projection from four sums per output channel, without host reads.

        One pass over the channel view (``(size(0), -1)``) sums, per channel, :math:`g \cdot p`,
        :math:`g \cdot g`, :math:`p \cdot p` and :math:`p \cdot u`; the layer view's sums are
        theirs summed. Both decisions are then made as adamp makes them (channel view first,
        cosines guarded by ``eps`` as ``cosine_similarity`` guards them), and the update is
        projected in the pass that applies it:

        .. math::

            u \leftarrow u - p\,\frac{p \cdot u}{(\|p\| + \epsilon)^2}

        which is adamp's ``u - unit * (unit * u).sum()`` with ``unit = p / (||p|| + eps)``,
        rounded differently. The cosines come from the sums rather than ``cosine_similarity``'s
        own reduction, so a cosine within rounding of the threshold may be decided the other way
        than in the loop runner (which checks such cases exactly); scale-invariant weights have
        cosines far below it.
        """
        if param.ndim <= 1:
            return update, 1.0
        p = param.to(grad.dtype)
        expand = [-1] + [1] * (param.ndim - 1)
        p2, g2, u2 = (t.flatten(1) for t in (p, grad, update))  # (also a weight of no rows)
        dot, grad_sq = (g2 * p2).sum(dim=1), (g2 * g2).sum(dim=1)
        param_sq, radial = (p2 * p2).sum(dim=1), (p2 * u2).sum(dim=1)
        grad_norm, param_norm = grad_sq.sqrt(), param_sq.sqrt()
        cosines = dot.abs() / (grad_norm.clamp(min=eps) * param_norm.clamp(min=eps))
        channel = torch.cat((cosines, cosines.new_zeros(1))).max()  # 0 for a weight of no rows
        layer_norm = param_sq.sum().sqrt()
        layer = dot.sum().abs() / (grad_sq.sum().sqrt().clamp(min=eps) * layer_norm.clamp(min=eps))
        # cos < delta / sqrt(dim), squared: a square root of a symbolic size would specialise it
        square_delta = delta * delta
        by_channel = channel * channel * p2.size(1) < square_delta
        fired = by_channel | (layer * layer * p2.numel() < square_delta)
        channel_coefficient = radial / (param_norm + eps) / (param_norm + eps)
        layer_coefficient = radial.sum() / (layer_norm + eps) / (layer_norm + eps)
        coefficient = torch.where(by_channel, channel_coefficient, layer_coefficient)
        projected = torch.where(fired, update - p * coefficient.view(expand), update)
        one = torch.ones((), dtype=grad.dtype, device=grad.device)
        return projected, torch.where(fired, wd_ratio, one)
