"""Chunks compiled by inductor and called without dynamo: the compiled runner's CPU path.

Through ``torch.compile`` each call of a chunk pays dynamo's guards, a size read per tensor
through a dynamo-disabled wrapper and the wrappers around the compiled graph: about 110 µs for a
chunk of 16 tensors on the development CPU, and 0.25 ms once a 20M-parameter step has flushed
the caches, against 32 µs for the same compiled code called directly. On a 100-tensor model
that was 1.8 ms of a 16 ms step.

So for a chunk of parameters (any float dtype) whose tensors are all aliases of the parameter's
shape (1-D, or 2-D channel views for AdamP and SGDP; contiguous, at least two elements along each
dimension) on the CPU, the runner traces the chunk's step itself with ``make_fx`` (symbolic
sizes, one per dimension of a row) and compiles that graph with inductor's
``standalone_compile``: the same inductor lowering, options and kernels as ``torch.compile``
(results are bit for bit the same), without dynamo. The runner is then its own guard. A
compiled chunk is specialised on:

* the apply function, the algorithm's class and ``update_params``;
* the step's scalars: which are 0-d tensors (and their dtypes), and the value and type of every
  other one (zeros, flags, integers), which the trace bakes in;
* per row, the dtypes of the parameter, gradient, states and Kahan buffer, and their rank;
* the sizes of each row, each at least 2, which the trace must leave symbolic and independent of
  the other rows'. The chunk is traced on small probe rows; a graph whose shape guards are not
  implied by that is not used, and the compiled code is run once on longer rows against the
  same step run eagerly, so that code that specialised the sizes anyway is not used either;
* whether deterministic algorithms are on.

:class:`DirectStep` keys its compiled chunks on exactly those, and returns None for a chunk it
cannot take (another device, a tensor that is not an alias, scalars of
other types); the runner then uses ``torch.compile``, and a chunk that fails to trace or compile
warns once and falls back too.
With ``torch.compile`` switched off the runner runs the same code eagerly. (CUDA keeps
``torch.compile``: this path has not been measured on a GPU.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import sympy
import torch
from torch import Tensor
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental import _config as symbolic_shapes_config
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._sympy.numbers import int_oo

from fastoptim.reduction import StackedPartials
from fastoptim.runners.compiled.chunks import Chunk, row_tensors, row_width
from fastoptim.runners.compiled.cpu_codegen.fusion import inductor_patches
from fastoptim.runners.compiled.inputs import Layout, Row
from fastoptim.runners.compiled.ops import CompiledOps

#: Parameter dtypes this path takes. bf16 and fp16 chunks once stayed with ``torch.compile``,
#: whose kernel stepped bf16 Adam twice as fast; traced on probe rows of 4096 elements (vector
#: widths follow the traced sizes, see :data:`_PROBE_SIZE`) they ran 6-20% faster this way than
#: through ``torch.compile`` (AdamW, Lion, Adan, SGDP, DAdaptAdam, Prodigy in bf16, AdamW in fp16;
#: 20M parameters in 100 tensors, the history of ``benchmarks/RESULTS.md``).
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: Types of the scalars a trace may bake in; anything else sends the chunk to ``torch.compile``.
_CONSTANT_TYPES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class _CompiledChunk:
    """A chunk's compiled step: call ``artifact(*scalars, *row tensors)``."""

    artifact: Callable[..., Any]
    scalar_names: tuple[str, ...]
    #: Per row, what ``apply`` returned: None, or how many tensors (the artifact's next outputs,
    #: returned as a tuple: the partial sums of a reduction).
    results: tuple[int | None, ...]
    #: Whether every row returned the same number (at least one) of partial sums, which the
    #: artifact then returns as one :class:`StackedPartials` tensor.
    stacked: bool = False

    def __call__(self, inputs: list[Tensor]) -> list[Any] | StackedPartials:
        outputs = self.artifact(*inputs)
        if self.stacked:
            return StackedPartials(outputs[0], self.results[0] or 0)
        if not any(self.results):  # count 0 and None alike: nothing to hand back per row
            return [None if count is None else () for count in self.results]
        results: list[Any] = []
        position = 0
        for count in self.results:
            if count is None:
                results.append(None)
            else:
                results.append(tuple(outputs[position : position + count]))
                position += count
        return results


#: Compiled chunks by key (see the module's docstring); None marks a chunk that failed to compile.
_COMPILED: dict[tuple[Any, ...], _CompiledChunk | None] = {}
_MISSING = object()


def compiled_chunks() -> int:
    """How many chunk graphs this process compiled on this path (for tests and benchmarks)."""
    return sum(chunk is not None for chunk in _COMPILED.values())


def clear() -> None:
    """Forgets every compiled chunk (the next step compiles again)."""
    _COMPILED.clear()


def scalar_signature(scalars: SimpleNamespace) -> tuple[Any, ...] | None:
    """What a trace bakes in of ``scalars``; None when a value is neither a tensor nor a plain constant."""
    signature = []
    for name, value in vars(scalars).items():
        if isinstance(value, Tensor):
            signature.append((name, Tensor, value.dtype, value.device))
        elif type(value) in _CONSTANT_TYPES:
            signature.append((name, type(value), repr(value)))  # repr: 0.0 and -0.0, 1 and True differ
        else:
            return None
    return tuple(signature)


#: A chunk's step as a function of tensors, its scalars' names, and per trace what its rows
#: returned (see :func:`_chunk_step`).
_ChunkStep = tuple[Callable[..., list[Tensor]], tuple[str, ...], list[tuple[tuple[int | None, ...], bool]]]


def _stack_pointwise(values: list[Tensor]) -> Tensor:
    """``torch.stack`` of 0-d ``values`` in float64, written as one pointwise expression.

    (Inductor lowers ``torch.stack`` of many values to a copy into a slice of the output for
    each, passed to the kernel as a view: 32 views a chunk of DAdaptSGD, about 0.5 µs each.)
    """
    index = torch.arange(len(values), device=values[0].device)
    stacked = values[-1].to(torch.float64).expand(len(values))
    for position in range(len(values) - 2, -1, -1):
        stacked = torch.where(index == position, values[position].to(torch.float64), stacked)
    return stacked


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def _chunk_step(
    apply: Callable[..., Any],
    algorithm: Any,
    scalars: SimpleNamespace,
    layouts: tuple[Layout, ...],
    update_params: bool,
) -> _ChunkStep:
    """The chunk's step as a function of tensors only: the scalar tensors, then each row's."""
    names = tuple(name for name, value in vars(scalars).items() if isinstance(value, Tensor))
    constants = {name: value for name, value in vars(scalars).items() if name not in names}
    spec: list[tuple[tuple[int | None, ...], bool]] = []

    def step(*tensors: Tensor) -> list[Tensor]:
        step_scalars = SimpleNamespace(**constants, **dict(zip(names, tensors, strict=False)))
        position = len(names)
        results = []
        for layout in layouts:
            _, _, states, comp, _ = layout
            width = row_width(len(states), comp is not None)
            param, grad, *rest = tensors[position : position + width]
            position += width
            row_states, row_comp = (tuple(rest[:-1]), rest[-1]) if comp is not None else (tuple(rest), None)
            results.append(
                apply(algorithm, CompiledOps, param, grad, row_states, row_comp, step_scalars, update_params)
            )
        if any(r is not None and (type(r) is not tuple or not all(map(_is_tensor, r))) for r in results):
            raise TypeError("a compiled chunk's rows can only return None or a tuple of tensors")
        counts = tuple(None if r is None else len(r) for r in results)
        stacked = len(set(counts)) == 1 and bool(counts[0])
        spec.append((counts, stacked))
        if stacked:  # one output, not a 0-d tensor per row and sum: see StackedPartials
            return [_stack_pointwise([t for r in results for t in r])]
        return [t for r in results if r is not None for t in r]

    return step, names, spec


def _symbolic(fake_mode: FakeTensorMode, inputs: list[Tensor]) -> list[Tensor]:
    """Fake ``inputs`` with a symbolic size per dimension; 0-d scalars stay tensors.

    (``make_fx`` would give a float64 scalar's value a symbol too, which inductor then insists
    on specialising.)
    """
    sources = [None if t.dim() == 0 else ConstantSource(f"input{i}") for i, t in enumerate(inputs)]
    return [fake_mode.from_tensor(t, source=source) for t, source in zip(inputs, sources, strict=True)]


def _sizes_independent_and_free(graph: torch.fx.GraphModule, n_scalars: int, widths: list[int]) -> bool:
    """Whether the traced graph's sizes are free symbols of their own rows, valid for any value >= 2.

    The graph's inputs must be 0-d scalars, then the rows' tensors (1-D, or 2-D channel views),
    each of whose sizes is a symbol shared by no other row (within a row, the tensors the step
    relates share them; a tensor the step does not read keeps its own); every guard the trace
    recorded must follow from the sizes being at least 2.
    """
    values = [node.meta.get("val") for node in graph.graph.nodes if node.op == "placeholder"]
    if len(values) != n_scalars + sum(widths) or any(v is None or v.dim() != 0 for v in values[:n_scalars]):
        return False
    row_of_symbol: dict[Any, int] = {}
    shape_env = None
    position = n_scalars
    for row, width in enumerate(widths):
        for value in values[position : position + width]:
            if value.dim() not in (1, 2):
                return False
            for size in value.shape:
                if not isinstance(size, torch.SymInt):
                    return False
                symbol, shape_env = size.node.expr, size.node.shape_env
                if not symbol.is_Symbol or row_of_symbol.setdefault(symbol, row) != row:
                    return False
        position += width
    if shape_env is None:
        return False
    for symbol in row_of_symbol:
        bounds = shape_env.var_to_range.get(symbol)
        if bounds is None or bounds.lower > 2 or bounds.upper != int_oo:
            return False
    return all(shape_env._maybe_evaluate_static(guard.expr) == sympy.true for guard in shape_env.guards)


#: Elements of the 1-D probe rows a chunk is traced on (plus ``2 i + 1`` in row ``i``). Inductor
#: sizes its vectors by the sizes it is traced on: with rows of 3 to 33 elements it gave bf16 loops
#: half the vector width.
_PROBE_SIZE = 4096
#: Channels and elements per channel of the 2-D probe rows (plus ``i`` and ``2 i + 1``).
_PROBE_CHANNELS = (32, 128)


def _probe_shape(rank: int, i: int, extra: int) -> tuple[int, ...]:
    """The shape of row ``i``'s probe tensors: odd sizes, so that the loops' remainders run too."""
    if rank == 1:
        return (_PROBE_SIZE + 2 * i + 1 + extra,)
    channels, size = _PROBE_CHANNELS
    return (channels + i + extra, size + 2 * i + 1 + extra)


def _probe(chunk: tuple[Row, ...], extra: int) -> list[list[Tensor]]:
    """Per row, uniform [0, 1) tensors of the row's dtypes and ranks, shaped by :func:`_probe_shape`.

    Non-negative, so that square roots stay real.
    """
    generator = torch.Generator().manual_seed(extra)

    def probe(tensor: Tensor, i: int) -> Tensor:
        return torch.rand(_probe_shape(tensor.dim(), i, extra), generator=generator).to(tensor.dtype)

    return [[probe(t, i) for t in row_tensors(row)] for i, row in enumerate(chunk)]


def _steps_other_sizes(
    artifact: Callable[..., Any],
    step: Callable[..., list[Tensor]],
    scalars: list[Tensor],
    chunk: tuple[Row, ...],
) -> bool:
    """Whether ``artifact`` steps rows of sizes it was not traced with as the same step run eagerly.

    The graph's sizes were checked to be free; this checks that the compiled code did not
    specialise them anyway (it would leave the end of each longer row untouched). The rows'
    tensors must agree to rounding (2e-2 in a row whose parameter has low precision); the partial
    sums only loosely (1e-2): summed in another order, a sum that nearly cancels keeps few
    significant bits (DAdaptAdaGrad's gave 1.95e-3 against 2.20e-3).
    """
    rows = _probe(chunk, extra=29)
    mine = [[t.clone() for t in row] for row in rows]
    with torch.no_grad():
        expected = step(*scalars, *(t for row in rows for t in row))
        outputs = artifact(*scalars, *(t for row in mine for t in row))
    pairs = [(want, got, 1e-2) for want, got in zip(expected, outputs, strict=True)]
    for row, my_row in zip(rows, mine, strict=True):
        # a low-precision parameter's float32 values (AdamP's scratch) come from rounded states
        tolerance = 2e-2 if row[0].dtype in (torch.bfloat16, torch.float16) else 1e-4
        pairs += [(want, got, tolerance) for want, got in zip(row, my_row, strict=True)]
    return all(
        want.shape == got.shape and torch.allclose(got.float(), want.float(), rtol=tolerance, atol=tolerance)
        for want, got, tolerance in pairs
    )


def _compile(
    chunk_step: _ChunkStep,
    chunk: tuple[Row, ...],
    scalars: SimpleNamespace,
    options: dict[str, Any],
    optimizer_name: str,
) -> _CompiledChunk | None:
    """Compiles :func:`_chunk_step`'s function for ``chunk``'s layout; None, and a warning, on failure.

    Traced on small probe rows (:func:`_probe`), then checked on longer ones
    (:func:`_steps_other_sizes`).
    """
    step, names, spec = chunk_step
    scalar_inputs = [getattr(scalars, name) for name in names]
    rows = _probe(chunk, extra=0)
    try:
        with torch.no_grad(), symbolic_shapes_config.patch(use_duck_shape=False):
            fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_fallback_kernels=False)
            inputs = scalar_inputs + [t for row in rows for t in row]
            graph = make_fx(step, tracing_mode="symbolic")(*_symbolic(fake_mode, inputs))
        if not _sizes_independent_and_free(graph, len(names), [len(row) for row in rows]):
            raise ValueError("the traced sizes are not free symbols of their own rows")
        symbolic_inputs = [node.meta["val"] for node in graph.graph.nodes if node.op == "placeholder"]
        tracing = torch._guards.tracing(torch._guards.TracingContext(fake_mode))
        with inductor_patches(), tracing:
            artifact = torch._inductor.standalone_compile(
                graph,
                symbolic_inputs,
                dynamic_shapes="from_tracing_context",
                options={"config_patches": options},
            )
        if not _steps_other_sizes(artifact, step, scalar_inputs, chunk):
            raise ValueError("the compiled chunk does not step tensors of other sizes as the step does")
    except Exception as error:  # any failure leaves the chunk to torch.compile
        warnings.warn(
            f"fastoptim: compiling a chunk of {optimizer_name}'s step without dynamo failed "
            f"({type(error).__name__}: {error}); using torch.compile for it",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _CompiledChunk(artifact, names, *spec[-1])


class DirectStep:
    """A bucket's step through compiled chunks called without dynamo.

    Made once per bucket and step, so that what is the same for every chunk of the bucket (the
    device, dtype and scalars) is looked at once. The core runner makes none while
    ``torch.compile`` is switched off.

    Args:
        apply: The runner's apply function (a rule, or a phase of a reducing algorithm).
        algorithm: The bare instance of the optimizer's class the runner compiles with.
        scalars: The step's scalars, 0-d tensors for the nonzero floats.
        update_params: False during optimizer accumulation.
        options: Inductor's options.
        device, dtype: The bucket's device and parameter dtype.
    """

    def __init__(
        self,
        apply: Callable[..., Any],
        algorithm: Any,
        scalars: SimpleNamespace,
        update_params: bool,
        options: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.apply, self.algorithm, self.scalars = apply, algorithm, scalars
        self.update_params, self.options = update_params, options
        signature = scalar_signature(scalars)
        on_cpu = device.type == "cpu"
        self.usable = signature is not None and dtype in _DTYPES and on_cpu
        deterministic = torch.are_deterministic_algorithms_enabled()
        self.key = (apply, type(algorithm), update_params, signature, deterministic)

    def __call__(self, chunk: Chunk) -> list[Any] | None:
        """Runs ``chunk`` through its compiled step, compiling it on first use.

        Returns:
            What ``apply`` returned per row, or None when this path cannot take the chunk.
        """
        if not self.usable or None in chunk.layouts:
            return None
        key = (*self.key, chunk.layouts)
        compiled = _COMPILED.get(key, _MISSING)
        if compiled is _MISSING:
            layouts, name = chunk.layouts, type(self.algorithm).__name__
            chunk_step = _chunk_step(self.apply, self.algorithm, self.scalars, layouts, self.update_params)
            compiled = _COMPILED[key] = _compile(chunk_step, chunk.rows(), self.scalars, self.options, name)
        if compiled is None:
            return None
        return compiled([getattr(self.scalars, name) for name in compiled.scalar_names] + chunk.tensors)
