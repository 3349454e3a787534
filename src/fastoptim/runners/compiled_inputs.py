"""What the compiled runner passes to its graph: flat aliases, kept between steps, and padding.

A row is one parameter's ``(param, grad, states, kahan_comp)``. The graph is traced for a chunk
of :data:`CHUNK_SIZE` rows, so the inputs are shaped to need as few graphs, and cost as little
per step, as possible:

* Contiguous tensors are passed as 1-D aliases of their memory, so that a weight and a bias
  need the same graph. The alias is a detached flat view, which is not a view any more: dynamo
  guards on a view's base, which would again tell a flattened weight from a flattened bias.
* Making an alias costs about 1 µs, checking one about 0.2 µs. The parameter, its states and
  its Kahan buffer live as long as the optimizer, so their aliases are kept and made again only
  when a tensor moved (``p.data = ...``, ``load_state_dict``). Gradients are usually new every
  step and are aliased each time.
* The last chunk of a long bucket is filled up with padding rows of two-element tensors (zeros
  at first, whatever the step makes of them later; their results are dropped), so a model of
  any size needs one graph, not one per chunk length.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

#: Rows per compiled call. One call costs about 40 µs of guards and wrappers on a CPU, plus about
#: 5 µs per row; 32 or 64 rows per call were no faster on a 100-tensor model and took 7 and 14
#: times as long to compile.
CHUNK_SIZE = 16
#: Elements along each dimension of a padding tensor; sizes 0 and 1 would be specialised.
_PADDING_SIZE = 2

Row = tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor | None]

#: Per optimizer: parameter id -> the inputs made for its own tensors (see :func:`owned_inputs`).
_OWNED: weakref.WeakKeyDictionary[Any, dict[int, tuple[Tensor | None, ...]]] = weakref.WeakKeyDictionary()
#: Padding rows per layout (dtype, device and rank of each tensor of a row).
_PADDING: dict[tuple[Any, ...], list[Row]] = {}


def as_input(tensor: Tensor | None, flatten: bool) -> Tensor | None:
    """A plain tensor sharing ``tensor``'s memory: 1-D when it is contiguous and ``flatten``."""
    if tensor is None:
        return None
    if flatten and tensor.is_contiguous():
        return tensor.view(-1).detach()  # detached, not a view: no base to guard on
    return tensor.detach()


def _still_flat_aliases(aliases: tuple[Tensor | None, ...], tensors: tuple[Tensor | None, ...]) -> bool:
    """Whether each of ``aliases`` is still the 1-D alias of the memory of the same of ``tensors``.

    A tensor that moved has another address; one that was reshaped in place (``p.data =
    p.data.t()``) keeps it but is no longer contiguous or has another size. (A new dtype at the
    same address would need a reinterpreting view, which no optimizer state or parameter is.)
    """
    if len(aliases) != len(tensors):
        return False
    for alias, tensor in zip(aliases, tensors, strict=True):
        if tensor is None or alias is None:
            if alias is not tensor:
                return False
        elif (
            alias.data_ptr() != tensor.data_ptr()
            or alias.numel() != tensor.numel()
            or not tensor.is_contiguous()
        ):
            return False
    return True


def owned_inputs(
    optimizer: Any, owned: tuple[Tensor | None, ...], flatten: bool
) -> tuple[Tensor | None, ...]:
    """The inputs for a parameter's own tensors ``(param, *states, kahan_comp)``, kept between steps.

    Kept only when every one is a flat alias (``flatten`` and contiguous); the cache holds one
    entry per parameter and replaces it when a tensor moved, so it never grows past the model.
    """
    if not flatten:
        return tuple(as_input(t, flatten) for t in owned)
    cache = _OWNED.setdefault(optimizer, {})
    cached = cache.get(id(owned[0]))
    if cached is not None and _still_flat_aliases(cached, owned):
        return cached
    inputs = tuple(as_input(t, flatten) for t in owned)
    if all(t is None or t.is_contiguous() for t in owned):
        cache[id(owned[0])] = inputs
    return inputs


def _padding_tensor(like: Tensor | None) -> Tensor | None:
    if like is None:
        return None
    return torch.zeros((_PADDING_SIZE,) * like.dim(), dtype=like.dtype, device=like.device)


def _padding(like: Row, count: int) -> list[Row]:
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


def chunks(rows: list[Row]) -> Iterator[tuple[tuple[Row, ...], int]]:
    """``rows`` cut into the chunks of one call each: one graph serves a bucket of any length.

    A bucket of fewer than :data:`CHUNK_SIZE` rows is run one row per call; a longer one in
    chunks of :data:`CHUNK_SIZE`, the last one padded. (Padding short buckets too would save
    calls but compile a 16-row graph for every small model: 7 s more on a CPU.)

    Yields:
        ``(chunk, real)``: the chunk's rows and how many of them (the first ones) are ``rows``'.
    """
    if len(rows) < CHUNK_SIZE:
        for row in rows:
            yield (row,), 1
        return
    for start in range(0, len(rows), CHUNK_SIZE):
        chunk = rows[start : start + CHUNK_SIZE]
        real = len(chunk)
        if real < CHUNK_SIZE:
            chunk = chunk + _padding(chunk[-1], CHUNK_SIZE - real)
        yield tuple(chunk), real
