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
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

Scalar = float | Tensor


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

    return torch.ops.prims.fma(operand(a), operand(b), operand(c))


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
        param: Tensor, grad: Tensor, update: Tensor, delta: float, wd_ratio: float, eps: float
    ) -> tuple[Tensor, Scalar]:
        """AdamP's projection without host reads: both decisions as tensors, as adamp decides."""
        if param.ndim <= 1:
            return update, 1.0
        param = param.to(grad.dtype)
        expand = [-1] + [1] * (param.ndim - 1)
        fired = None
        result, ratio = update, torch.ones((), dtype=grad.dtype, device=grad.device)
        for rows in (param.size(0), 1):
            p, g = param.reshape(rows, -1), grad.reshape(rows, -1)
            cosine = functional.cosine_similarity(g, p, dim=1, eps=eps).abs().max()
            fires = cosine < delta / math.sqrt(p.size(1))
            unit = param / p.norm(dim=1).view(expand if rows > 1 else [1] * param.ndim).add(eps)
            radial = (unit * update).reshape(rows, -1).sum(dim=1)
            projected = update - unit * radial.view(expand if rows > 1 else [1] * param.ndim)
            fires = fires if fired is None else fires & ~fired
            result = torch.where(fires, projected, result)
            ratio = torch.where(fires, torch.full_like(ratio, wd_ratio), ratio)
            fired = fires if fired is None else fired | fires
        return result, ratio
