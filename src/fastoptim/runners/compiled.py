"""The compiled runner: each tensor's whole update as one inductor-compiled kernel.

The same ``apply`` (rule, low precision, L2, Kahan, decoupled decay) the eager runners call is
traced with :class:`~fastoptim.runners.compiled_ops.CompiledOps`, so inductor fuses a step into
one pass over the parameter, its gradient and its states (two for reducing algorithms: the
reduction, then the update; two for AdamP/SGDP's per-channel sums). Chunks of aliased
tensors on the CPU are traced and
compiled by :mod:`~fastoptim.runners.compiled_direct` and called without dynamo, which saves
most of the Python a call costs; every other chunk goes through ``torch.compile``
(``fullgraph=True``, dynamic shapes). Both compile with the options below.

What decides a compilation, and what does not:

* Shapes are dynamic, and contiguous tensors are passed flattened, so one graph serves every
  parameter of a model (dtype and device still count; AdamP/SGDP get ``(size(0), -1)`` channel
  views of their weights for the projection, and non-contiguous tensors such as channels_last
  weights keep their shapes).
* One call updates a chunk of :data:`~fastoptim.runners.compiled_inputs.CHUNK_SIZE` tensors
  (one loop each), which spreads the fixed cost of a call (wrappers, and guards through
  ``torch.compile``) over the chunk; the last chunk is padded, so a model of any size needs one
  graph. A bucket's chunks are kept between steps and checked in bulk
  (:mod:`~fastoptim.runners.compiled_chunks`). Sizes within a chunk are independent symbols (no
  duck shaping), so tensors of equal size in one model do not tie the graph to that model.
* A kernel's loops wait for each other only where one depends on another
  (:mod:`~fastoptim.runners.loop_barriers`).
* Inductor's ``cpp.dynamic_threads`` is on. Otherwise inductor decides at compile time, from the
  sizes it first sees, whether each loop runs on all threads or on one; the graph is then reused
  (and cached on disk) for every other model, so a graph first compiled for small tensors ran a
  20M-parameter step on one thread, at half the speed on two cores.
* Nonzero float scalars (lr, bias corrections, d) are 0-d tensors (float32, or float64 for
  float64 parameters), so schedulers, step counts and ``load_state_dict`` do not recompile.
  Zeros stay Python floats, so that a disabled feature (no weight decay) costs nothing; a
  scalar that becomes zero or nonzero compiles once more. Flags (booleans, integers, None) are
  part of the configuration.
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
from torch.fx.experimental import _config as symbolic_shapes_config

from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled_chunks import bucket_chunks
from fastoptim.runners.compiled_direct import DirectStep, StackedPartials
from fastoptim.runners.compiled_ops import CompiledOps
from fastoptim.runners.reduction_fusion import CACHE_KEY, inductor_patches
from fastoptim.runners.update_scratch import compute_dtype

#: Distinct graphs one process may compile for the runner's entry point (torch's defaults, 8 per
#: function and 256 in all, are too few for a library whose optimizers, dtypes and phases all
#: share one function).
RECOMPILE_LIMIT = 256
#: Inductor options; see the module's docstring.
INDUCTOR_OPTIONS = {
    "emulate_precision_casts": True,
    "cpp.dynamic_threads": True,
    "size_asserts": False,
    "post_grad_custom_post_pass": CACHE_KEY,
}


def _limit_names() -> tuple[str, ...]:
    """Dynamo's per-function and accumulated recompile limits, under the names this torch uses."""
    names = []
    for candidates in (
        ("recompile_limit", "cache_size_limit"),  # renamed in torch 2.6
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"),
    ):
        names += [name for name in candidates if hasattr(torch._dynamo.config, name)][:1]
    return tuple(names)


_LIMIT_NAMES = _limit_names()


def _tensor_scalars(
    scalars: SimpleNamespace, dtype: torch.dtype, float64: tuple[str, ...]
) -> SimpleNamespace:
    """The step's scalars, nonzero floats as 0-d tensors of the precision the step computes in.

    Float32 for every dtype but float64, as eager torch rounds a Python scalar to a float32
    tensor's compute type: a float64 0-d tensor would be converted in every iteration of every
    kernel loop, which made a step 5-10% slower. The names in ``float64`` stay float64.
    """
    scalar_dtype = compute_dtype(dtype)
    values = {}
    for name, value in vars(scalars).items():
        if isinstance(value, float) and value != 0.0:
            value = torch.tensor(value, dtype=torch.float64 if name in float64 else scalar_dtype)
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


_compiled_chunk = torch.compile(_step_chunk, dynamic=True, fullgraph=True, options=INDUCTOR_OPTIONS)
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


def _settings() -> list[tuple[Any, str, Any]]:
    """``(config, name, value)`` for the recompile limits and duck shaping."""
    config = torch._dynamo.config
    settings: list[tuple[Any, str, Any]] = [
        (config, name, max(RECOMPILE_LIMIT, getattr(config, name))) for name in _LIMIT_NAMES
    ]
    settings.append((symbolic_shapes_config, "use_duck_shape", False))
    return settings


@contextlib.contextmanager
def _compile_settings() -> Iterator[None]:
    """The runner's dynamo settings, restored on exit.

    Set and restored attribute by attribute: ``config.patch`` costs about 40 µs a call, and
    calls made inside it about 25 µs more.
    """
    settings = _settings()
    saved = [(config, name, getattr(config, name)) for config, name, _ in settings]
    try:
        for config, name, value in settings:
            setattr(config, name, value)
        yield
    finally:
        for config, name, value in saved:
            setattr(config, name, value)


def run_compiled(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` to each tensor of ``bucket`` through the compiled step.

    Chunks of aliased tensors on the CPU run without dynamo
    (:mod:`~fastoptim.runners.compiled_direct`), the others through ``torch.compile``.

    Returns:
        What ``apply`` returned, per tensor (partial sums in a reduction phase); a chunk compiled
        without dynamo returns its partial sums as one
        :class:`~fastoptim.runners.compiled_direct.StackedPartials` instead.
    """
    scalars = _tensor_scalars(bucket.scalars, bucket.dtype, optimizer.FLOAT64_SCALARS)
    algorithm = _algorithm(optimizer)
    options = INDUCTOR_OPTIONS
    direct = DirectStep(apply, algorithm, scalars, update_params, options, bucket.device, bucket.dtype)
    if "compiled_chunks" not in bucket.prepared:  # reducing algorithms run a bucket twice a step
        bucket.prepared["compiled_chunks"] = bucket_chunks(optimizer, bucket)
    results = []
    for chunk in bucket.prepared["compiled_chunks"]:
        result = direct(chunk)
        if result is None and direct.disabled:  # for debugging: the same code, eagerly
            result = _step_chunk(apply, algorithm, chunk.rows(), scalars, update_params)
        elif result is None:
            with _compile_settings(), inductor_patches():
                rows = chunk.rows(detach_grads=True)
                result = _compiled_chunk(apply, algorithm, rows, scalars, update_params)
        if isinstance(result, StackedPartials):
            results.append(result.first_rows(chunk.real))
        else:
            results.extend(result[: chunk.real])
    return results
