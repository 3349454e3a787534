"""The compiled runner: each tensor's whole update as one ``torch.compile``'d kernel.

The same ``apply`` (rule, low precision, L2, Kahan, decoupled decay) the eager runners call is
traced with :class:`~fastoptim.runners.compiled_ops.CompiledOps`, so inductor fuses a step into
one pass over the parameter, its gradient and its states (two for reducing algorithms: the
reduction, then the update).

What decides a compilation, and what does not:

* Shapes are dynamic, and contiguous tensors are passed flattened, so one graph serves every
  parameter of a model (dtype and device still count; AdamP/SGDP keep their shapes for the
  projection, and non-contiguous tensors such as channels_last weights keep theirs).
* One call updates a chunk of up to :data:`CHUNK_SIZES` ``[0]`` tensors (one kernel each), which
  spreads the fixed cost of a call (guards, wrappers) over the chunk. The chunk's length is part
  of the graph; sizes within it are independent symbols (no duck shaping), so tensors of equal
  size in one model do not tie the graph to that model.
* Nonzero float scalars (lr, bias corrections, d) are 0-d float64 tensors, so schedulers, step
  counts and ``load_state_dict`` do not recompile. Zeros stay Python floats, so that a disabled
  feature (no weight decay) costs nothing; a scalar that becomes zero or nonzero compiles once
  more. Flags (booleans, integers, None) are part of the configuration.
* Inductor's ``emulate_precision_casts`` is on: without it, inductor keeps a bf16 parameter's
  new value in float32 inside the kernel, and the Kahan compensation (new value minus what was
  stored) comes out as zero.
* The optimizer object is not an input: two optimizers with the same configuration share the
  compiled code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.fx.experimental import _config as symbolic_shapes_config

from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled_ops import CompiledOps

#: Distinct graphs one process may compile for the runner's entry point (torch's defaults, 8 per
#: function and 256 in all, are too few for a library whose optimizers, dtypes and chunk sizes
#: all share one function).
RECOMPILE_LIMIT = 256
#: Tensors per compiled call, largest first: a bucket is cut greedily into chunks of these sizes,
#: so a model of any size needs at most one graph per size. One call costs about 40 µs of
#: guards and wrappers on a CPU, so chunks of 16 cut the cost per tensor from about 55 µs to about
#: 20 µs (most of what is left is making the 1-D aliases); larger chunks gained nothing
#: measurable and compile for longer.
CHUNK_SIZES = (16, 1)
_PER_FUNCTION_LIMIT = ("recompile_limit", "cache_size_limit")
_ACCUMULATED_LIMIT = ("accumulated_recompile_limit", "accumulated_cache_size_limit")


def _tensor_scalars(scalars: SimpleNamespace) -> SimpleNamespace:
    values = {}
    for name, value in vars(scalars).items():
        if isinstance(value, float) and value != 0.0:
            value = torch.tensor(value, dtype=torch.float64)
        values[name] = value
    return SimpleNamespace(**values)


def _step_chunk(
    apply: Apply,
    algorithm: Any,
    rows: tuple[tuple[Any, ...], ...],
    scalars: SimpleNamespace,
    update_params: bool,
) -> list[Any]:
    return [
        apply(algorithm, CompiledOps, param, grad, states, comp, scalars, update_params)
        for param, grad, states, comp in rows
    ]


_compiled_chunk = torch.compile(
    _step_chunk, dynamic=True, fullgraph=True, options={"emulate_precision_casts": True}
)
_ALGORITHMS: dict[type, Any] = {}


def _chunks(rows: list[tuple[Any, ...]]) -> Iterator[tuple[tuple[Any, ...], ...]]:
    """``rows`` cut greedily into consecutive chunks of the sizes in :data:`CHUNK_SIZES`."""
    start = 0
    for size in CHUNK_SIZES:
        while len(rows) - start >= size:
            yield tuple(rows[start : start + size])
            start += size


def _algorithm(optimizer: Any) -> Any:
    """A bare instance of the optimizer's class, shared by all its optimizers.

    Rules take everything from their scalars, never from the optimizer, so the compiled code
    guards on this one object instead of on each optimizer.
    """
    cls = type(optimizer)
    if cls not in _ALGORITHMS:
        _ALGORITHMS[cls] = cls.__new__(cls)
    return _ALGORITHMS[cls]


@contextlib.contextmanager
def _compile_settings() -> Iterator[None]:
    config = torch._dynamo.config
    limits = {}
    for names in (_PER_FUNCTION_LIMIT, _ACCUMULATED_LIMIT):  # renamed in torch 2.6
        for name in names:
            if hasattr(config, name):
                limits[name] = max(RECOMPILE_LIMIT, getattr(config, name))
                break
    with config.patch(limits), symbolic_shapes_config.patch(use_duck_shape=False):
        yield


def _as_input(tensor: Tensor | None, flatten: bool) -> Tensor | None:
    """A plain tensor sharing ``tensor``'s memory: 1-D when it is contiguous and shapes do not matter.

    The 1-D alias is made with ``set_`` rather than ``view``: dynamo guards on a view's base, so
    a flattened weight and a flattened bias would otherwise need different graphs. Plain tensors
    (not ``nn.Parameter``) and one rank keep the number of graphs down.
    """
    if tensor is None:
        return None
    if flatten and tensor.is_contiguous():
        alias = tensor.new_empty(0)
        return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))
    return tensor.detach()


def run_compiled(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` to each tensor of ``bucket`` through the compiled step.

    Returns:
        What ``apply`` returned, per tensor (partial sums in a reduction phase).
    """
    scalars = _tensor_scalars(bucket.scalars)
    flatten = not optimizer.NEEDS_SHAPES
    algorithm = _algorithm(optimizer)
    rows = [
        (
            _as_input(param, flatten),
            _as_input(grad, flatten),
            tuple(_as_input(t, flatten) for t in states),
            _as_input(comp, flatten),
        )
        for param, grad, states, comp in bucket.tensors()
    ]
    results = []
    with _compile_settings():
        for chunk in _chunks(rows):
            results.extend(_compiled_chunk(apply, algorithm, chunk, scalars, update_params))
    return results
