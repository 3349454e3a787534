"""The roofline of an optimizer step: the bytes it must move, and the bandwidth that moves them.

An optimizer step is elementwise and memory-bound, so its fastest possible time is the memory it
must read and write divided by the memory bandwidth. The bytes come from a table of elements per
parameter (read the parameter, the gradient and every state; write the parameter and the states
that change), times the dtype's size, plus 2 elements (read and write) for the Kahan
compensation buffer of bf16/fp16 parameters. The bandwidth is measured here with streaming
kernels on buffers of a comparable size. Shared by ``fastoptim bench`` and
``benchmarks/step_speed.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

#: Elements per parameter one step reads or writes at least once, keyed by optimizer class name
#: (SGD and SGDP with momentum). Adam: read p, g, m, v and write p, m, v. Where a step's update
#: needs a global statistic of the same step (Prodigy's new ``d`` in its ``eps`` term), the
#: minimum is two passes: the first reads what the statistic needs, the second the rest. The other
#: D-Adaptation updates use only the previous step's ``d``, so one pass is their minimum: the
#: reductions for the next ``d`` can ride along.
ELEMENTS_PER_PARAM: dict[str, int] = {
    "Adam": 7,
    "AdamW": 7,
    "ADOPT": 7,
    # AdamP and SGDP project each update on sums over its own channels of the same step, so two
    # passes: read g, p, m, v and write m, v; then read m, v, p and write p
    "AdamP": 10,
    "Adan": 11,
    "Lion": 5,
    "SGD": 5,
    # read g, p, b (and write b); then read b, p and write p and the projected b
    "SGDP": 8,
    # pass 1: read g, p, p0, s, write s; pass 2: read g, m, v, p, write m, v, p
    "Prodigy": 12,
    "DAdaptAdam": 9,
    "DAdaptAdan": 13,
    "DAdaptLion": 7,
    # read p, g, s, x0; write p, s (the state z = x0 - s is read by nothing: state_dict() fills it
    # in, a step does not write it)
    "DAdaptSGD": 6,
    # read p, g, alpha, s, x0; write p, alpha, s
    "DAdaptAdaGrad": 8,
}


def elements_per_param(class_name: str, state_tensors: int) -> tuple[int, bool]:
    """Elements per parameter a step moves, and whether the table knows the optimizer.

    Args:
        class_name: The optimizer's class name.
        state_tensors: State tensors per parameter, for optimizers missing from the table: each
            is then assumed read and written once (``3 + 2 * state_tensors``).

    Returns:
        ``(elements, known)``; ``known`` is False when the count is the estimate.
    """
    if class_name in ELEMENTS_PER_PARAM:
        return ELEMENTS_PER_PARAM[class_name], True
    return 3 + 2 * state_tensors, False


def roofline_bytes_per_param(elements: int, dtype: torch.dtype, kahan: bool) -> int:
    """Bytes per parameter a step must move: ``elements`` of ``dtype``, plus 2 for a Kahan buffer."""
    size = torch.finfo(dtype).bits // 8
    return size * (elements + (2 if kahan else 0))


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued kernels, so that host timers measure their work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def measure_bandwidth(n_bytes: int, rounds: int = 15, device: torch.device | str = "cpu") -> float:
    """Best median bandwidth (bytes/s) of streaming kernels over ``n_bytes`` of float32 buffers.

    Three kernels (out-of-place add, in-place add, copy) run ``rounds`` times each; the best of
    their median bandwidths is the machine's practical limit for an elementwise step.
    """
    device = torch.device(device)
    n = max(n_bytes // 4 // 3, 1)
    a, b, c = (torch.rand(n, device=device) for _ in range(3))
    kernels: list[tuple[Callable[[], object], int]] = [
        (lambda: torch.add(a, b, alpha=0.5, out=c), 3),  # 2 reads, 1 write
        (lambda: a.add_(b, alpha=1e-9), 3),  # 2 reads, 1 write
        (lambda: c.copy_(a), 2),  # 1 read, 1 write
    ]
    best = 0.0
    for kernel, arrays in kernels:
        kernel()
        times = []
        for _ in range(rounds):
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            times.append(time.perf_counter() - start)
        best = max(best, arrays * n * 4 / statistics.median(times))
    return best


def state_size(optimizer: torch.optim.Optimizer) -> tuple[float, int]:
    """Measured optimizer state: bytes per parameter, and state tensors per parameter.

    Every tensor in ``optimizer.state`` counts towards the bytes (0-d step counters included);
    the tensor count is of the first parameter's parameter-sized buffers, excluding the Kahan
    buffer (the roofline adds that by dtype).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    n_params = sum(p.numel() for p in params)
    total = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )
    first = optimizer.state.get(params[0], {}) if params else {}
    tensors = sum(
        1
        for key, t in first.items()
        if isinstance(t, torch.Tensor) and t.numel() == params[0].numel() and key != "kahan_comp"
    )
    return total / max(n_params, 1), tensors
