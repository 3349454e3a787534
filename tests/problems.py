"""Small deterministic training problems shared by the tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def tiny_mlp(seed: int = 0, inputs: int = 5) -> nn.Module:
    """A seeded ``inputs -> 8 -> 2`` tanh MLP, for optimizer-behaviour tests."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 8), nn.Tanh(), nn.Linear(8, 2))


def backward_random_batch(model: nn.Module, seed: int, inputs: int = 5) -> None:
    """Fresh gradients: the mean square output on a seeded batch of 16 random inputs."""
    generator = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    model(torch.randn(16, inputs, generator=generator)).pow(2).mean().backward()


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """An MLP with 2-D weights, biases and a LayerNorm (1-D parameters)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 3))
    return model.to(dtype)


def make_batches(steps: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> list[Batch]:
    """One regression batch per step."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(6, 3, generator=generator)
    batches = []
    for _ in range(steps):
        x = torch.randn(32, 6, generator=generator)
        y = torch.tanh(x @ target) + 0.1 * torch.randn(32, 3, generator=generator)
        batches.append((x.to(dtype), y.to(dtype)))
    return batches


def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x).float(), y.float())


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[Batch],
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_step: Callable[[int], None] | None = None,
) -> list[float]:
    """The usual zero_grad / backward / step loop; returns the losses."""
    losses = []
    for i, batch in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(i)
    return losses


def twin(model: nn.Module) -> nn.Module:
    """An independent copy with identical parameters."""
    return copy.deepcopy(model)


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True))
