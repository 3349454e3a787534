"""The compiled runner: each tensor's whole update as one ``torch.compile``'d kernel.

The same ``apply`` (rule, low precision, L2, Kahan, decoupled decay) the eager runners call is
traced with :class:`~fastoptim.runners.compiled_ops.CompiledOps`, so inductor fuses a step into
one pass over the parameter, its gradient and its states (two for reducing algorithms: the
reduction, then the update).

What decides a compilation, and what does not:

* Shapes are dynamic, and contiguous tensors are passed flattened, so one graph serves every
  parameter of a model (dtype and device still count; AdamP/SGDP keep their shapes for the
  projection, and non-contiguous tensors such as channels_last weights keep theirs).
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

from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled_ops import CompiledOps

#: Distinct graphs one process may compile for the runner's entry point (torch's default is 8,
#: too few for a library whose optimizers and dtypes all share one function).
RECOMPILE_LIMIT = 256


def _tensor_scalars(scalars: SimpleNamespace) -> SimpleNamespace:
    values = {}
    for name, value in vars(scalars).items():
        if isinstance(value, float) and value != 0.0:
            value = torch.tensor(value, dtype=torch.float64)
        values[name] = value
    return SimpleNamespace(**values)


def _step(
    apply: Apply,
    algorithm: Any,
    param: Tensor,
    grad: Tensor,
    states: tuple[Tensor, ...],
    comp: Tensor | None,
    scalars: SimpleNamespace,
    update_params: bool,
) -> Any:
    return apply(algorithm, CompiledOps, param, grad, states, comp, scalars, update_params)


_compiled_step = torch.compile(_step, dynamic=True, fullgraph=True, options={"emulate_precision_casts": True})
_ALGORITHMS: dict[type, Any] = {}


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
def _recompile_limit() -> Iterator[None]:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch({name: max(RECOMPILE_LIMIT, getattr(config, name))}):
        yield


def _as_input(tensor: Tensor | None, flatten: bool) -> Tensor | None:
    """A plain tensor sharing ``tensor``'s memory: 1-D when it is contiguous and shapes do not matter.

    Plain tensors (not ``nn.Parameter``) and one rank keep the number of graphs down.
    """
    if tensor is None:
        return None
    if flatten and tensor.is_contiguous():
        return tensor.view(-1)
    return tensor.detach()


def run_compiled(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` to each tensor of ``bucket`` through the compiled step.

    Returns:
        What ``apply`` returned, per tensor (partial sums in a reduction phase).
    """
    scalars = _tensor_scalars(bucket.scalars)
    flatten = not optimizer.NEEDS_SHAPES
    algorithm = _algorithm(optimizer)
    results = []
    with _recompile_limit():
        for param, grad, states, comp in bucket.tensors():
            param, grad, comp = (_as_input(t, flatten) for t in (param, grad, comp))
            states = tuple(_as_input(t, flatten) for t in states)
            results.append(
                _compiled_step(apply, algorithm, param, grad, states, comp, scalars, update_params)
            )
    return results
