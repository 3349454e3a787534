"""A bucket's inputs to the compiled runner, cut into chunks and kept between steps.

:mod:`~fastoptim.runners.compiled.inputs` makes a parameter's row (aliases of its own tensors,
kept per parameter, and of its gradient). Checked and made one parameter at a time, rows cost
about 7 µs a parameter on the development CPU once a step has flushed the caches: 0.7 ms of a
100-tensor step, 7 ms of a 1000-tensor one, nearly all of it the Python around a few dozen
attribute reads. So a bucket whose own tensors are all aliased keeps its chunks as well, with the
gradients left out, and a step checks the whole bucket at once with ``map`` over its tensors
(about 0.2 µs a tensor) before it fills in the new gradients:

* the same parameter objects, in the same order;
* every own tensor (parameters, states, Kahan buffers) at the address and of the size it had,
  and contiguous, so that the kept aliases still cover it (``p.data = ...`` and
  ``load_state_dict`` move them); for optimizers that need channels, the parameters' shapes too;
* the gradients contiguous and of the parameters' dtype (the layout the chunks were keyed on).

A bucket that fails the check is made row by row again, as before, and kept anew. One bucket is
kept per first parameter and dtype, so the cache never grows past the model.
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

from torch import Tensor

from fastoptim.runners.apply import Apply
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled.inputs import (
    CHUNK_SIZE,
    Layout,
    Row,
    as_input,
    forget_owned,
    owned_cache,
    owned_inputs,
    padding,
    row_of,
)
from fastoptim.runners.compiled.ops import CompiledOps
from fastoptim.runners.probe import rule_traits


@dataclass(frozen=True)
class Chunk:
    """The rows of one compiled call.

    Attributes:
        tensors: Row after row, ``param, grad, *states`` and the Kahan buffer when there is one.
        layouts: Each row's :data:`~fastoptim.runners.compiled.inputs.Layout`.
        real: How many rows (the first ones) are the bucket's; the others are padding.
        n_states: States per row.
        has_comp: Whether each row ends with a Kahan buffer.
    """

    tensors: list[Tensor]
    layouts: tuple[Layout, ...]
    real: int
    n_states: int
    has_comp: bool

    def rows(self, detach_grads: bool = False) -> tuple[Row, ...]:
        """The rows as ``(param, grad, states, kahan_comp)``.

        Args:
            detach_grads: Detach the gradients' inputs, which may be views of the gradients:
                dynamo guards on a view's base (a flattened weight's gradient would need
                another graph than a bias's).
        """
        width = row_width(self.n_states, self.has_comp)
        rows = []
        for start in range(0, len(self.tensors), width):
            param, grad, *rest = self.tensors[start : start + width]
            comp = rest.pop() if self.has_comp else None
            rows.append((param, grad.detach() if detach_grads else grad, tuple(rest), comp))
        return tuple(rows)


def row_width(n_states: int, has_comp: bool) -> int:
    """Tensors per row: parameter, gradient, states, and the Kahan buffer when there is one."""
    return 2 + n_states + has_comp


def row_tensors(row: Row) -> list[Tensor]:
    """A row's tensors in the order a compiled chunk takes them."""
    param, grad, states, comp = row
    return [param, grad, *states, *([] if comp is None else [comp])]


def _cut(
    rows: list[Row], layouts: list[Layout], alone: list[bool]
) -> list[tuple[list[Row], list[Layout], int, list[int]]]:
    """``rows`` in the chunks of one call each: ``(rows, layouts, real, indices of the real rows)``.

    Rows marked ``alone`` (those a plugin gave a scratch buffer) are a call each. Of the others,
    fewer than :data:`CHUNK_SIZE` rows are run one row per call; more in chunks of
    :data:`CHUNK_SIZE`, the last one padded, so that one graph serves a bucket of any length.
    (Padding short buckets too would save calls but compile a 16-row graph for every small model:
    7 s more on a CPU.) Padding rows have the layout of the row they copy.
    """
    cut = [([rows[i]], [layouts[i]], 1, [i]) for i in range(len(rows)) if alone[i]]
    rest = [i for i in range(len(rows)) if not alone[i]]
    if len(rest) < CHUNK_SIZE:
        return cut + [([rows[i]], [layouts[i]], 1, [i]) for i in rest]
    for start in range(0, len(rest), CHUNK_SIZE):
        indices = rest[start : start + CHUNK_SIZE]
        chunk, chunk_layouts = [rows[i] for i in indices], [layouts[i] for i in indices]
        real = len(chunk)
        if real < CHUNK_SIZE:
            chunk = chunk + padding(chunk[-1], CHUNK_SIZE - real)
            chunk_layouts = chunk_layouts + [chunk_layouts[-1]] * (CHUNK_SIZE - real)
        cut.append((chunk, chunk_layouts, real, indices))
    return cut


def _chunk(rows: list[Row], layouts: list[Layout], real: int) -> Chunk:
    """The chunk of ``rows`` (each row's states, and Kahan buffer or not, as the first row's)."""
    _, _, states, comp = rows[0]
    tensors = [t for row in rows for t in row_tensors(row)]
    return Chunk(tensors, tuple(layouts), real, len(states), comp is not None)


def _own_tensors(bucket: Bucket) -> list[Tensor]:
    """The bucket's parameters, states (state by state) and Kahan buffers, in one list."""
    return [*bucket.params, *chain.from_iterable(bucket.states), *(bucket.kahan_comps or ())]


class _KeptBucket:
    """A bucket's chunks without their gradients, and what its tensors were when they were made."""

    def __init__(
        self, bucket: Bucket, rows: list[Row], layouts: list[Layout], alone: list[bool], keep_channels: bool
    ) -> None:
        owned = _own_tensors(bucket)
        self.params = list(bucket.params)
        self.pointers = tuple(map(Tensor.data_ptr, owned))
        self.sizes = tuple(map(Tensor.numel, owned))
        self.shapes = tuple(map(operator.attrgetter("shape"), bucket.params)) if keep_channels else None
        self.dtype = bucket.dtype
        #: Per chunk: the chunk with None for the bucket's gradients, and its real rows' indices.
        self.templates = []
        for chunk_rows, chunk_layouts, real, indices in _cut(rows, layouts, alone):
            chunk = _chunk(chunk_rows, chunk_layouts, real)
            width = row_width(chunk.n_states, chunk.has_comp)
            chunk.tensors[1 : real * width : width] = [None] * real
            self.templates.append((chunk, indices))

    def chunks(self, bucket: Bucket) -> list[Chunk] | None:
        """The chunks with ``bucket``'s gradients; None when ``bucket`` no longer matches."""
        params, grads = bucket.params, bucket.grads
        if len(params) != len(self.params) or not all(map(operator.is_, params, self.params)):
            return None
        owned = _own_tensors(bucket)
        if tuple(map(Tensor.data_ptr, owned)) != self.pointers:
            return None
        if tuple(map(Tensor.numel, owned)) != self.sizes:
            return None
        if not all(map(Tensor.is_contiguous, owned)) or not all(map(Tensor.is_contiguous, grads)):
            return None
        if set(map(operator.attrgetter("dtype"), grads)) != {self.dtype}:
            return None
        if self.shapes is None:
            grad_inputs = list(map(Tensor.flatten, grads))
        elif tuple(map(operator.attrgetter("shape"), params)) == self.shapes:
            grad_inputs = list(map(as_input, grads, repeat(True)))
        else:
            return None
        chunks = []
        for template, indices in self.templates:  # (dataclasses.replace costs ~4 µs a chunk)
            tensors = template.tensors.copy()
            width = row_width(template.n_states, template.has_comp)
            tensors[1 : template.real * width : width] = [grad_inputs[i] for i in indices]
            chunks.append(
                Chunk(tensors, template.layouts, template.real, template.n_states, template.has_comp)
            )
        return chunks


#: Per optimizer: (id of a bucket's first parameter, dtype) -> the bucket kept.
_KEPT: weakref.WeakKeyDictionary[Any, dict[tuple[int, Any], _KeptBucket]] = weakref.WeakKeyDictionary()


def bucket_chunks(optimizer: Any, bucket: Bucket, apply: Apply, rows_alone: Any = None) -> list[Chunk]:
    """``bucket``'s rows in chunks (see the module's docstring), from what was kept when it matches.

    Args:
        optimizer: The optimizer the bucket belongs to (the chunks are kept per optimizer).
        bucket: The parameters, gradients and states.
        apply: The phase to run, whose rule decides whether weights keep their channels
            (:mod:`~fastoptim.runners.probe`).
        rows_alone: A plugin's hook that adds inputs to some rows and runs those alone
            (:class:`~fastoptim.runners.compiled.plugins.Plugin`); None: no row runs alone.
    """
    kept_buckets = _KEPT.setdefault(optimizer, {})
    key = (id(bucket.params[0]), bucket.dtype)
    kept = kept_buckets.get(key)
    chunks = None if kept is None else kept.chunks(bucket)
    if chunks is not None:
        return chunks
    first = next(iter(bucket.tensors()))
    traits = rule_traits(optimizer, apply, first, bucket.scalars, CompiledOps)
    keep_channels = traits.channels

    def alone_rows(rows: list[Row], layouts: list[Layout]) -> list[bool]:
        if rows_alone is None:
            return [False] * len(rows)
        return rows_alone(optimizer, traits, rows, layouts)

    cache = owned_cache(optimizer)
    rows, layouts, owns = [], [], []
    for param, grad, states, comp in bucket.tensors():
        own = owned_inputs(cache, (param, *states, comp), keep_channels)
        row, layout = row_of(own, grad, keep_channels)
        rows.append(row)
        layouts.append(layout)
        owns.append(own)
    alone = alone_rows(rows, layouts)
    if all(own.aliased for own in owns):
        kept_rows = [(own.param, own.param, own.states, own.comp) for own in owns]  # grads: filled in
        kept_layouts = [own.layout for own in owns]
        kept_alone = alone_rows(kept_rows, kept_layouts)
        kept_buckets[key] = _KeptBucket(bucket, kept_rows, kept_layouts, kept_alone, keep_channels)
    return [_chunk(*cut[:3]) for cut in _cut(rows, layouts, alone)]


def forget_kept_inputs(optimizer: Any) -> None:
    """Drops every alias the runner keeps of ``optimizer``'s parameters and states.

    They share the memory of the tensors they were made for: after ``load_state_dict`` they would
    keep the replaced states alive until the next step checks them.
    """
    _KEPT.pop(optimizer, None)
    forget_owned(optimizer)
