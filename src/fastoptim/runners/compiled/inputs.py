"""What the compiled runner passes to its graph: flat aliases, kept between steps, and padding.

A row is one parameter's ``(param, grad, states, kahan_comp)``. The graph is traced for a chunk
of :data:`CHUNK_SIZE` rows, so the inputs are shaped to need as few graphs, and cost as little
per step, as possible:

* Contiguous tensors are passed as aliases of their memory: 1-D, so that a weight and a bias
  need the same graph, or, for optimizers that need each output channel
  (rules that call ``ops.project``, AdamP's projection), 2-D ``(size(0), -1)`` for
  tensors of two or more dimensions, so that a linear and a convolution weight need the same
  graph. The alias is a detached view, which is not a view any more: dynamo guards on a view's
  base, which would again tell a flattened weight from a flattened bias.
* Making an alias costs about 1 µs, checking one about 0.2 µs. The parameter, its states and
  its Kahan buffer live as long as the optimizer, so their aliases are kept and made again only
  when a tensor moved (``p.data = ...``, ``load_state_dict``). Gradients are usually new every
  step and are aliased each time. (:mod:`~fastoptim.runners.compiled.chunks` keeps whole
  buckets too, cut into chunks.)
* The last chunk of a long bucket is filled up with :func:`padding` rows of two-element tensors
  (zeros at first, whatever the step makes of them later; their results are dropped), so a model
  of any size needs one graph, not one per chunk length.
* Each row comes with its :data:`Layout`: the dtypes of its tensors and their rank when all of
  them are aliases of the parameter's shape with at least two elements along each dimension,
  which is what a chunk called without dynamo (``cpu_codegen.direct``) is
  specialised on.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

#: Rows per compiled call. Through ``torch.compile`` one call cost about 30 µs of guards and
#: wrappers on the development CPU plus about 5 µs per row, and 32 or 64 rows per call were no
#: faster on a 100-tensor model while they took 7 and 14 times as long to compile; called without
#: dynamo, a call of 16 rows costs about 32 µs in all.
CHUNK_SIZE = 16
#: Elements along each dimension of a padding tensor; sizes 0 and 1 would be specialised.
_PADDING_SIZE = 2

Row = tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor | None]
#: A row's dtypes ``(param, grad, states, kahan_comp or None)`` and the rank of its tensors (1, or
#: 2 for channel views), when every tensor of the row is an alias of the parameter's shape with at
#: least 2 elements along each dimension; None otherwise.
Layout = tuple[torch.dtype, torch.dtype, tuple[torch.dtype, ...], torch.dtype | None, int] | None


class Owned:
    """What the runner keeps of a parameter's own tensors ``(param, *states, kahan_comp)``.

    Attributes:
        param, states, comp: The inputs made for them (aliases when contiguous).
        pointers, sizes: The tensors' addresses and numbers of elements when the inputs were
            made (None for a missing Kahan buffer), to tell when one moved or was resized.
        channel_shape: The parameter's shape when its inputs are channel views (then a
            parameter reshaped in place, same memory, needs other views); None otherwise.
        aliased: Whether every input is an alias of a contiguous tensor (and so kept between
            steps).
        layout: The row's :data:`Layout` for a gradient of the parameter's dtype; None when
            the inputs do not all have the parameter's aliased shape with two elements or more
            along each dimension.
    """

    __slots__ = ("aliased", "channel_shape", "comp", "layout", "param", "pointers", "sizes", "states")

    def __init__(self, owned: tuple[Tensor | None, ...], keep_channels: bool) -> None:
        inputs = tuple(as_input(t, keep_channels) for t in owned)
        self.param, self.states, self.comp = inputs[0], inputs[1:-1], inputs[-1]
        self.pointers = tuple(None if t is None else t.data_ptr() for t in owned)
        self.sizes = tuple(0 if t is None else t.numel() for t in owned)
        self.channel_shape = owned[0].shape if keep_channels else None
        self.aliased = all(t is None or t.is_contiguous() for t in owned)
        self.layout: Layout = None
        shape = self.param.shape
        if self.aliased and min(shape, default=0) >= 2 and all(t is None or t.shape == shape for t in inputs):
            dtypes = tuple(None if t is None else t.dtype for t in inputs)
            self.layout = (dtypes[0], dtypes[0], dtypes[1:-1], dtypes[-1], len(shape))

    def still_aliases(self, tensors: tuple[Tensor | None, ...]) -> bool:
        """Whether the kept inputs still share the memory of ``tensors``, element for element.

        A tensor that moved has another address; one that was reshaped in place (``p.data =
        p.data.t()``) keeps it but is no longer contiguous or has another size, or, for channel
        views, another shape. (A new dtype at
        the same address would need a reinterpreting view, which no optimizer state or parameter
        is.)
        """
        if len(tensors) != len(self.pointers):
            return False
        if self.channel_shape is not None and tensors[0].shape != self.channel_shape:
            return False
        for tensor, pointer, size in zip(tensors, self.pointers, self.sizes, strict=True):
            if tensor is None:
                if pointer is not None:
                    return False
            elif tensor.data_ptr() != pointer or tensor.numel() != size or not tensor.is_contiguous():
                return False
        return True


#: Per optimizer: parameter id -> what :func:`owned_inputs` made for its own tensors.
_OWNED: weakref.WeakKeyDictionary[Any, dict[int, Owned]] = weakref.WeakKeyDictionary()
#: Padding rows per layout (dtype, device and rank of each tensor of a row).
_PADDING: dict[tuple[Any, ...], list[Row]] = {}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a rule computes a ``dtype`` parameter's update in: float64 or float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_input(tensor: Tensor | None, keep_channels: bool) -> Tensor | None:
    """A plain tensor sharing ``tensor``'s memory, an alias of it when it is contiguous.

    The alias is 1-D, or ``(size(0), -1)`` when ``keep_channels`` and ``tensor`` has two or
    more dimensions.
    """
    if tensor is None:
        return None
    if not tensor.is_contiguous():
        return tensor.detach()
    if keep_channels and tensor.dim() >= 2:
        return tensor.flatten(1).detach()  # detached, not a view: no base to guard on
    return tensor.view(-1).detach()


def owned_inputs(cache: dict[int, Owned], owned: tuple[Tensor | None, ...], keep_channels: bool) -> Owned:
    """What the runner passes for a parameter's own tensors ``(param, *states, kahan_comp)``.

    Kept in ``cache`` (one per optimizer, see :func:`owned_cache`) when every one is an alias
    (contiguous); the cache holds one entry per parameter and replaces it when a tensor moved, so
    it never grows past the model. ``keep_channels`` must be the same for every call with one
    cache (it is a property of the optimizer's class).
    """
    kept = cache.get(id(owned[0]))
    if kept is not None and kept.still_aliases(owned):
        return kept
    kept = Owned(owned, keep_channels)
    if kept.aliased:
        cache[id(owned[0])] = kept
    return kept


def forget_owned(optimizer: Any) -> None:
    """Drops what :func:`owned_inputs` kept for ``optimizer`` (aliases keep memory alive)."""
    _OWNED.pop(optimizer, None)


def owned_cache(optimizer: Any) -> dict[int, Owned]:
    """The cache of :func:`owned_inputs` for ``optimizer``'s parameters."""
    return _OWNED.setdefault(optimizer, {})


def row_of(kept: Owned, grad: Tensor, keep_channels: bool) -> tuple[Row, Layout]:
    """A parameter's row from its kept inputs and its gradient, with the row's layout.

    The gradient is shaped as the parameter's input: aliased like it when the parameter's tensors
    are aliases (copied first if it is not contiguous, say the transpose of a contiguous tensor),
    with its own shape otherwise.
    """
    if not kept.aliased:
        return (kept.param, grad.detach(), kept.states, kept.comp), None
    grad_input = as_input(grad.contiguous(), keep_channels)
    layout = kept.layout
    if layout is not None and grad_input.dtype is not layout[1]:
        layout = (layout[0], grad_input.dtype, *layout[2:])
    return (kept.param, grad_input, kept.states, kept.comp), layout


def _padding_tensor(like: Tensor | None) -> Tensor | None:
    if like is None:
        return None
    return torch.zeros((_PADDING_SIZE,) * like.dim(), dtype=like.dtype, device=like.device)


def padding(like: Row, count: int) -> list[Row]:
    """``count`` padding rows laid out as ``like``: distinct tensors, so no inputs alias."""
    param, grad, states, comp = like
    tensors = (param, grad, *states, comp)
    layout = tuple((t.dtype, t.device, t.dim()) if t is not None else None for t in tensors)
    rows = _PADDING.setdefault(layout, [])
    while len(rows) < count:
        rows.append(
            (
                _padding_tensor(param),
                _padding_tensor(grad),
                tuple(_padding_tensor(t) for t in states),
                _padding_tensor(comp),
            )
        )
    return rows[:count]
