"""Replays the golden runs of the official code (``tests/golden/*.pt``) with a fastoptim optimizer."""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"

PROBLEMS: dict[str, Callable[[], nn.Module]] = {
    "mlp": lambda: nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)),
    "mlp_zero_last": lambda: nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)),
    "mlp_bn": lambda: nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)),
    "conv_bn": lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)
    ),
}


@cache
def load(name: str) -> dict[str, Any]:
    """The golden file ``name`` (for example ``"adopt"``)."""
    return torch.load(GOLDEN_DIR / f"{name}.pt", weights_only=True)


def max_diff(ours: list[dict[str, torch.Tensor]], theirs: list[dict[str, torch.Tensor]]) -> float:
    """Largest absolute parameter difference over all steps and parameters."""
    return max((a[k] - b[k]).abs().max().item() for a, b in zip(ours, theirs, strict=True) for k in a)


def runs(name: str, exclude: Callable[[str, dict[str, Any]], bool]) -> list[str]:
    """Names of the runs in golden file ``name`` that ``exclude`` does not reject."""
    return [run for run, spec in load(name)["runs"].items() if not exclude(run, spec)]


def build_problem(golden: dict[str, Any], problem: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    spec = golden["problems"][problem]
    model = PROBLEMS[problem]()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in spec["init"].items():
            named[key].copy_(value)
        buffers = dict(model.named_buffers())
        for key, value in spec["buffers_init"].items():
            buffers[key].copy_(value)
    model.train()
    return model, spec["X"], spec["Y"]


def replay(
    name: str, run: str, make_optimizer: Callable[..., torch.optim.Optimizer], **overrides: Any
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], torch.optim.Optimizer]:
    """Runs the five steps of a golden run with ``make_optimizer(params, **kwargs)``.

    Runs single-threaded, as the golden runs were. The golden files were made on another CPU:
    the official packages themselves reproduce them only to about 1e-7 here (vectorised kernels
    round differently), so compare with a tolerance, and bit for bit with the installed package.

    Returns:
        (our parameters after each step, the golden ones, the optimizer).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    golden = load(name)
    spec = golden["runs"][run]
    model, x, y = build_problem(golden, spec["problem"])
    named = dict(model.named_parameters())
    groups = [
        {
            "params": [named[n] for n in names],
            **(ast.literal_eval(options) if isinstance(options, str) else options),
        }
        for names, options in spec["groups"]
    ]
    kwargs = {**spec["kwargs"], **overrides}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    optimizer = make_optimizer(groups, **kwargs)
    scheduler = None
    if spec["schedule"] is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 5))
    trace = []
    for step in range(len(spec["param_trace"])):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if spec["restart_after"] is not None and step + 1 == spec["restart_after"]:
            optimizer.restart_opt()
        trace.append({n: p.detach().clone() for n, p in model.named_parameters()})
    torch.set_num_threads(threads)
    return trace, spec["param_trace"], optimizer
