"""fastoptim in Lightning, on the CPU.

configure_optimizers with a scheduler, automatic optimization (which calls
``optimizer.step(closure)``) and gradient clipping.

Run: ``pip install -e ".[frameworks]" && python examples/lightning_module.py``
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning
import torch
from torch import nn

import fastoptim


class Regression(lightning.LightningModule):
    """A small MLP on a fixed regression problem."""

    def __init__(self, make_optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        self.make_optimizer = make_optimizer
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.make_optimizer(self.parameters())
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data() -> torch.utils.data.DataLoader:
    """A fixed regression problem: 256 examples in batches of 32."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def train(make_optimizer: Callable[[Any], torch.optim.Optimizer], steps: int = 30) -> list[float]:
    """Trains the module; returns the loss of every step."""
    module = Regression(make_optimizer)
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data())
    return module.losses


if __name__ == "__main__":
    losses = train(lambda params: fastoptim.Prodigy(params, lr=1.0))
    print(f"Prodigy: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
