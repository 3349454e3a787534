"""The compiled runner's core: each tensor's whole update as one ``torch.compile`` kernel.

The same ``apply`` (rule, low precision, L2, Kahan, decoupled decay) the eager runners call is
traced with :class:`~fastoptim.runners.compiled.ops.CompiledOps`, so inductor fuses a step into
one pass over the parameter, its gradient and its states (two for reducing algorithms: the
reduction, then the update; two for AdamP/SGDP's per-channel sums). The core uses
``torch.compile`` (``fullgraph=True``, dynamic shapes) with documented inductor options only, on
every device. A plugin (:mod:`~fastoptim.runners.compiled.plugins`) may compile and call some
chunks its own way; the CPU one is :mod:`~fastoptim.runners.compiled.cpu_codegen`.

What decides a compilation, and what does not:

* Shapes are dynamic, and contiguous tensors are passed flattened, so one graph serves every
  parameter of a model (dtype and device still count). Rules that call ``ops.project`` (AdamP,
  SGDP) get ``(size(0), -1)`` channel views of their weights instead, as
  :mod:`~fastoptim.runners.probe` finds out; non-contiguous tensors such as
  channels_last weights keep their shapes.
* One call updates a chunk of :data:`~fastoptim.runners.compiled.inputs.CHUNK_SIZE` tensors
  (one loop each), which spreads the fixed cost of a call (wrappers and guards) over the chunk;
  the last chunk is padded, so a model of any size needs one graph. A bucket's chunks are kept
  between steps and checked in bulk (:mod:`~fastoptim.runners.compiled.chunks`). Sizes within a
  chunk are independent symbols (no duck shaping, where this torch has the switch), so tensors
  of equal size in one model do not tie the graph to that model.
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
import functools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from fastoptim.projection import deciding
from fastoptim.reduction import StackedPartials
from fastoptim.runners.apply import Apply, apply_rule
from fastoptim.runners.bucket import Bucket
from fastoptim.runners.compiled.chunks import bucket_chunks, forget_kept_inputs
from fastoptim.runners.compiled.inputs import compute_dtype
from fastoptim.runners.compiled.ops import CompiledOps
from fastoptim.runners.compiled.plugins import Plugin, plugin_for, registered
from fastoptim.runners.foreach import run_foreach

#: Distinct graphs one process may compile for the runner's entry point (torch's defaults, 8 per
#: function and 256 in all, are too few for a library whose optimizers, dtypes and phases all
#: share one function).
RECOMPILE_LIMIT = 256
#: Inductor options of the core; see the module's docstring.
INDUCTOR_OPTIONS = {"emulate_precision_casts": True, "cpp.dynamic_threads": True, "size_asserts": False}


def _tensor_scalars(scalars: SimpleNamespace, dtype: torch.dtype) -> SimpleNamespace:
    """The step's scalars, nonzero floats as 0-d tensors of the precision the step computes in.

    Float32 for every dtype but float64, as eager torch rounds a Python scalar to a float32
    tensor's compute type: a float64 0-d tensor would be converted in every iteration of every
    kernel loop, which made a step 5-10% slower.
    """
    scalar_dtype = compute_dtype(dtype)
    values = {}
    for name, value in vars(scalars).items():
        if isinstance(value, float) and value != 0.0:
            value = torch.tensor(value, dtype=scalar_dtype)
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
    """``(config, name, value)`` for dynamo's recompile limits and duck shaping, where this torch has them."""
    config = torch._dynamo.config
    settings: list[tuple[Any, str, Any]] = []
    for candidates in (
        ("recompile_limit", "cache_size_limit"),  # renamed in torch 2.6
        ("accumulated_recompile_limit", "accumulated_cache_size_limit"),
    ):
        for name in candidates:
            if hasattr(config, name):
                settings.append((config, name, max(RECOMPILE_LIMIT, getattr(config, name))))
                break
    shapes_config = getattr(torch.fx.experimental, "_config", None)
    if hasattr(shapes_config, "use_duck_shape"):
        settings.append((shapes_config, "use_duck_shape", False))
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


@functools.cache
def _options(plugin: Plugin | None) -> dict[str, Any]:
    """The core's inductor options with the plugin's."""
    return {**INDUCTOR_OPTIONS, **(plugin.options if plugin is not None else {})}


@functools.cache
def _compiled_step(plugin: Plugin | None) -> Any:
    """``torch.compile`` of the chunk step with :func:`_options`."""
    return torch.compile(_step_chunk, dynamic=True, fullgraph=True, options=_options(plugin))


def compile_disabled() -> bool:
    """Whether ``torch.compile`` is switched off (``TORCH_COMPILE_DISABLE=1``): chunks run eagerly."""
    return bool(getattr(torch._dynamo.config, "disable", False))


def run_compiled(optimizer: Any, bucket: Bucket, update_params: bool, apply: Apply = apply_rule) -> list[Any]:
    """Applies ``apply`` to each tensor of ``bucket`` through the compiled step.

    Returns:
        What ``apply`` returned, per tensor (partial sums in a reduction phase), or per chunk a
        :class:`~fastoptim.reduction.StackedPartials` of its rows' partial sums.
    """
    if deciding():  # projections decided across ranks, which the compiled projection cannot read
        return run_foreach(optimizer, bucket, update_params, apply)
    scalars = _tensor_scalars(bucket.scalars, bucket.dtype)
    algorithm = _algorithm(optimizer)
    plugin = plugin_for(bucket.device)
    disabled = compile_disabled()
    direct = None
    if plugin is not None and plugin.direct_step is not None and not disabled:
        direct = plugin.direct_step(
            apply, algorithm, scalars, update_params, _options(plugin), bucket.device, bucket.dtype
        )
    if "compiled_chunks" not in bucket.prepared:  # reducing algorithms run a bucket twice a step
        rows_alone = None if plugin is None else plugin.rows_alone
        bucket.prepared["compiled_chunks"] = bucket_chunks(optimizer, bucket, apply, rows_alone)
    results = []
    for chunk in bucket.prepared["compiled_chunks"]:
        result = None if direct is None else direct(chunk)
        if result is None and disabled:  # for debugging: the same code, eagerly
            result = _step_chunk(apply, algorithm, chunk.rows(), scalars, update_params)
        elif result is None:
            patches = contextlib.nullcontext() if plugin is None else plugin.patches()
            with _compile_settings(), patches:
                rows = chunk.rows(detach_grads=True)
                result = _compiled_step(plugin)(apply, algorithm, rows, scalars, update_params)
        if isinstance(result, StackedPartials):
            results.append(result.first_rows(chunk.real))
        else:
            results.extend(result[: chunk.real])
    return results


def forget(optimizer: Any) -> None:
    """Drops every alias and buffer the runner and its plugins keep for ``optimizer``."""
    forget_kept_inputs(optimizer)
    for plugin in registered():
        if plugin.forget is not None:
            plugin.forget(optimizer)
