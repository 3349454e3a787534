"""Train a small regression MLP with each fastoptim optimizer on the CPU and compare.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import time

import torch
from torch import nn

import fastoptim

CONFIGS = {
    "Adam": (fastoptim.Adam, dict(lr=3e-3)),
    "AdamW": (fastoptim.AdamW, dict(lr=3e-3, weight_decay=1e-2)),
    "SGD (momentum)": (fastoptim.SGD, dict(lr=3e-2, momentum=0.9)),
    "Lion": (fastoptim.Lion, dict(lr=3e-4, weight_decay=1e-1)),
    "AdamW bf16 + Kahan": (fastoptim.AdamW, dict(lr=3e-3, weight_decay=1e-2)),
}


def main(steps: int = 300) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=generator)
    y = torch.sin(x @ torch.randn(32, 4, generator=generator))
    print(f"{'optimizer':22s} {'first loss':>10s} {'final loss':>10s} {'ms/step':>8s}")
    for name, (cls, kwargs) in CONFIGS.items():
        torch.manual_seed(0)
        dtype = torch.bfloat16 if "bf16" in name else torch.float32
        model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Linear(256, 4)).to(dtype)
        optimizer = cls(model.parameters(), **kwargs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        losses, step_time = [], 0.0
        for i in range(steps):
            batch = torch.randint(0, len(x), (128,), generator=generator)
            loss = nn.functional.mse_loss(model(x[batch].to(dtype)).float(), y[batch])
            optimizer.zero_grad()
            loss.backward()
            start = time.perf_counter()
            optimizer.step()
            step_time += time.perf_counter() - start
            scheduler.step()
            losses.append(loss.item())
            if i == 0:
                step_time = 0.0
        print(f"{name:22s} {losses[0]:10.4f} {losses[-1]:10.4f} {1e3 * step_time / (steps - 1):8.3f}")


if __name__ == "__main__":
    main()
