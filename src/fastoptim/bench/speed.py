"""The step-speed section: ``optimizer.step()`` per optimizer and backend, against the roofline.

A synthetic model (half square weight matrices, half bias vectors) with fixed random gradients
stands in for a real one: step time depends only on the tensors' sizes, and a model larger than
the caches makes the step memory-bound, as it is in practice. For each optimizer, one optimizer
per backend is built on fresh parameters, warmed up, then the backends are timed interleaved
(one step each, round after round, the order rotated) and the median is kept, so that a burst of
load on a shared machine hits every backend alike.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fastoptim.bench.roofline import (
    ELEMENTS_PER_PARAM,
    elements_per_param,
    measure_bandwidth,
    roofline_bytes_per_param,
    state_size,
    synchronize,
)
from fastoptim.bench.settings import OptimizerSpec
from fastoptim.precision import is_low_precision


@dataclass
class SpeedResult:
    """One optimizer on one backend; ``seconds`` is None when it could not run (see ``error``)."""

    name: str
    backend: str
    seconds: float | None
    roofline_seconds: float
    roofline_bytes_per_param: int
    #: False when the optimizer is missing from the roofline table and its bytes are estimated.
    roofline_known: bool
    #: Timed steps the median was taken over (fewer than asked when steps are slow).
    rounds: int
    error: str | None = None

    @property
    def roofline_multiple(self) -> float | None:
        """Step time over the roofline time (1.0 = at the memory-bandwidth limit)."""
        return None if self.seconds is None else self.seconds / self.roofline_seconds


def param_shapes(n_params: int, n_tensors: int) -> list[tuple[int, ...]]:
    """Half square weight matrices, half bias vectors, about ``n_params`` elements in all."""
    layers = max(n_tensors // 2, 1)
    width = max(int((n_params / layers) ** 0.5), 1)
    return [(width, width), (width,)] * layers


def make_params(
    n_params: int, n_tensors: int, dtype: torch.dtype, seed: int, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Parameters shaped by :func:`param_shapes`, each with a fixed random gradient.

    Gradients have scale 1e-2, so that repeated steps keep values finite.
    """
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in param_shapes(n_params, n_tensors):
        p = torch.nn.Parameter(torch.randn(shape, generator=generator).to(device=device, dtype=dtype))
        p.grad = torch.randn(shape, generator=generator).to(device=device, dtype=dtype) * 1e-2
        params.append(p)
    return params


def time_interleaved(
    steps: Sequence[Callable[[], Any]], rounds: int, device: torch.device | str = "cpu"
) -> list[float]:
    """Median seconds per call of each function, called once each per round, order rotated.

    The first slot of a round runs on a colder cache, so the order shifts by one every round.
    """
    device = torch.device(device)
    times: list[list[float]] = [[] for _ in steps]
    for round_index in range(rounds):
        shift = round_index % len(steps)
        for index in [*range(shift, len(steps)), *range(shift)]:
            synchronize(device)
            start = time.perf_counter()
            steps[index]()
            synchronize(device)
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


#: The fewest timed steps per backend, however slow the steps.
MIN_ROUNDS = 3


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def time_optimizer(
    spec: OptimizerSpec,
    backends: Sequence[str],
    params: list[torch.Tensor],
    bandwidth: float,
    rounds: int,
    warmup: int,
    seconds: float,
) -> list[SpeedResult]:
    """Times ``spec`` on each backend over ``params``; a backend that fails is reported, not raised.

    Takes ``rounds`` timed steps per backend after ``warmup`` untimed ones, or fewer (at least
    :data:`MIN_ROUNDS`) where the last warm-up steps say they would take over ``seconds`` in all:
    on a loaded machine, the section then still ends in bounded time.
    """
    device = params[0].device
    dtype = params[0].dtype
    n_params = sum(p.numel() for p in params)
    built: list[tuple[str, torch.optim.Optimizer]] = []
    errors: dict[str, str] = {}
    round_seconds = 0.0
    for backend in backends:
        try:
            optimizer = spec.build(params, backend, fixed_gradients=True)
            for _ in range(max(warmup, 1)):
                synchronize(device)
                start = time.perf_counter()
                optimizer.step()
                synchronize(device)
            round_seconds += time.perf_counter() - start
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            errors[backend] = _first_line(error)
            continue
        built.append((backend, optimizer))
    rounds = max(MIN_ROUNDS, min(rounds, int(seconds / max(round_seconds, 1e-9))))
    tensors = state_size(built[0][1])[1] if built else 0
    elements, known = elements_per_param(spec.cls.__name__, tensors)
    per_param = roofline_bytes_per_param(elements, dtype, is_low_precision(dtype))
    roofline = per_param * n_params / bandwidth
    times = time_interleaved([optimizer.step for _, optimizer in built], rounds, device) if built else []
    medians = dict(zip([backend for backend, _ in built], times, strict=True))
    return [
        SpeedResult(spec.name, b, medians.get(b), roofline, per_param, known, rounds, errors.get(b))
        for b in backends
    ]


def speed_section(
    specs: Sequence[OptimizerSpec],
    backends: Sequence[str],
    *,
    n_params: int,
    n_tensors: int,
    dtype: torch.dtype,
    device: torch.device,
    rounds: int,
    warmup: int,
    seconds: float,
    seed: int,
    progress: Any,
) -> tuple[dict[str, Any], list[SpeedResult]]:
    """Measures the bandwidth, then times every optimizer on every backend.

    Returns:
        What was measured on (parameters, tensors, bandwidth in bytes/s, rounds, warm-up steps),
        and the results; ``progress`` advances once per optimizer.
    """
    shapes = param_shapes(n_params, n_tensors)
    n_actual = sum(math.prod(shape) for shape in shapes)
    # on buffers as large as an fp32 Adam step's traffic, so that the same level of the memory
    # hierarchy (a large last-level cache may hold a few million parameters) serves both
    bandwidth = measure_bandwidth(n_actual * 4 * ELEMENTS_PER_PARAM["Adam"], device=device)
    results: list[SpeedResult] = []
    for spec in specs:
        progress.set_postfix_str(spec.name, refresh=True)
        params = make_params(n_params, n_tensors, dtype, seed, device)
        results += time_optimizer(spec, backends, params, bandwidth, rounds, warmup, seconds)
        del params
        gc.collect()
        progress.update(1)
    info = {
        "parameters": n_actual,
        "tensors": len(shapes),
        "bandwidth_bytes_per_second": bandwidth,
        "rounds": rounds,
        "warmup": warmup,
    }
    return info, results
