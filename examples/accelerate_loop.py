"""fastoptim with Hugging Face accelerate: ``Accelerator.prepare`` wraps the optimizer, on the CPU.

Run: ``pip install -e ".[frameworks]" && python examples/accelerate_loop.py``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

import fastoptim


def train(make_optimizer: Callable[[Any], torch.optim.Optimizer], steps: int = 30) -> list[float]:
    """A small MLP on a fixed regression problem; returns the loss of every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=generator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.sin(x.sum(dim=1, keepdim=True))), batch_size=32
    )
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses: list[float] = []
    while len(losses) < steps:
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


if __name__ == "__main__":
    losses = train(lambda params: fastoptim.AdamW(params, lr=1e-2))
    print(f"AdamW: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
