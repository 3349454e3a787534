"""Elementwise primitives that algorithm rules are written in.

An algorithm's :meth:`~fastoptim.optimizer.Optimizer.rule` is written once against this small
vocabulary and every runner supplies an implementation: :class:`TensorOps` applies each primitive
to one tensor (the loop runner and gradient release), :class:`ForeachOps` to a list of tensors
with ``torch._foreach_*`` kernels.

Conventions that keep one rule valid for every runner, including functional ones (compiled,
Triton) where values are immutable:

* Every primitive returns its result, and rules always continue with the returned value
  (``m = ops.lerp_(m, g, w)``), never with the argument.
* A trailing underscore means the runner *may* write the result into the first argument. Rules
  use in-place primitives only on values they own: state buffers and temporaries they created.
  Gradients and parameters are read-only inside a rule.
* Scalars are Python floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

TensorList = list[Tensor]


class TensorOps:
    """Primitives on single tensors, in place where the name says so."""

    @staticmethod
    def add(x: Tensor, y: Tensor | float, alpha: float = 1.0) -> Tensor:
        """Returns ``x + alpha * y`` in a new tensor."""
        return torch.add(x, y, alpha=alpha)

    @staticmethod
    def add_(x: Tensor, y: Tensor | float, alpha: float = 1.0) -> Tensor:
        """``x += alpha * y``."""
        return x.add_(y, alpha=alpha)

    @staticmethod
    def sub(x: Tensor, y: Tensor) -> Tensor:
        """Returns ``x - y`` in a new tensor."""
        return torch.sub(x, y)

    @staticmethod
    def sub_(x: Tensor, y: Tensor) -> Tensor:
        """``x -= y``."""
        return x.sub_(y)

    @staticmethod
    def mul_(x: Tensor, scalar: float) -> Tensor:
        """``x *= scalar``."""
        return x.mul_(scalar)

    @staticmethod
    def lerp(x: Tensor, y: Tensor, weight: float) -> Tensor:
        """Returns ``x + weight * (y - x)`` in a new tensor."""
        return torch.lerp(x, y, weight)

    @staticmethod
    def lerp_(x: Tensor, y: Tensor, weight: float) -> Tensor:
        """``x += weight * (y - x)``."""
        return x.lerp_(y, weight)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, value: float) -> Tensor:
        """``x += value * a * b``."""
        return x.addcmul_(a, b, value=value)

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value: float) -> Tensor:
        """``x += value * a / b``."""
        return x.addcdiv_(a, b, value=value)

    @staticmethod
    def sqrt(x: Tensor) -> Tensor:
        """Returns ``sqrt(x)`` in a new tensor."""
        return torch.sqrt(x)

    @staticmethod
    def sign_(x: Tensor) -> Tensor:
        """``x = sign(x)``."""
        return x.sign_()

    @staticmethod
    def copy_(dst: Tensor, src: Tensor) -> Tensor:
        """Writes ``src`` into ``dst``, rounding to ``dst``'s dtype."""
        return dst.copy_(src)

    @staticmethod
    def to_fp32(x: Tensor) -> Tensor:
        """Returns a float32 copy of a low-precision tensor."""
        return x.to(torch.float32)


def _is_scalar(y: object) -> bool:
    return isinstance(y, (int, float))


class ForeachOps:
    """The same primitives on lists of same-device, same-dtype tensors (``torch._foreach_*``)."""

    @staticmethod
    def add(x: TensorList, y: TensorList | float, alpha: float = 1.0) -> TensorList:
        if _is_scalar(y):
            return list(torch._foreach_add(x, y * alpha))
        return list(torch._foreach_add(x, y, alpha=alpha))

    @staticmethod
    def add_(x: TensorList, y: TensorList | float, alpha: float = 1.0) -> TensorList:
        if _is_scalar(y):
            torch._foreach_add_(x, y * alpha)
        else:
            torch._foreach_add_(x, y, alpha=alpha)
        return x

    @staticmethod
    def sub(x: TensorList, y: TensorList) -> TensorList:
        return list(torch._foreach_sub(x, y))

    @staticmethod
    def sub_(x: TensorList, y: TensorList) -> TensorList:
        torch._foreach_sub_(x, y)
        return x

    @staticmethod
    def mul_(x: TensorList, scalar: float) -> TensorList:
        torch._foreach_mul_(x, scalar)
        return x

    @staticmethod
    def lerp(x: TensorList, y: TensorList, weight: float) -> TensorList:
        return list(torch._foreach_lerp(x, y, weight))

    @staticmethod
    def lerp_(x: TensorList, y: TensorList, weight: float) -> TensorList:
        torch._foreach_lerp_(x, y, weight)
        return x

    @staticmethod
    def addcmul_(x: TensorList, a: TensorList, b: TensorList, value: float) -> TensorList:
        torch._foreach_addcmul_(x, a, b, value=value)
        return x

    @staticmethod
    def addcdiv_(x: TensorList, a: TensorList, b: TensorList, value: float) -> TensorList:
        torch._foreach_addcdiv_(x, a, b, value=value)
        return x

    @staticmethod
    def sqrt(x: TensorList) -> TensorList:
        return list(torch._foreach_sqrt(x))

    @staticmethod
    def sign_(x: TensorList) -> TensorList:
        torch._foreach_sign_(x)
        return x

    @staticmethod
    def copy_(dst: TensorList, src: TensorList) -> TensorList:
        torch._foreach_copy_(dst, src)
        return dst

    @staticmethod
    def to_fp32(x: TensorList) -> TensorList:
        return [t.to(torch.float32) for t in x]
