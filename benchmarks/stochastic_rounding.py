"""bf16 training with round-to-nearest, Kahan summation and stochastic rounding, against float32.

Trains the same small regression MLP (tests/problems.py's) with AdamW in float32 and in bf16 three
ways, and reports each bf16 run's distance to the float32 run (relative L2 norm of the parameter
difference), its final loss, how far its weights decayed against float32's, and the optimizer
state it keeps per parameter.

Usage::

    python benchmarks/stochastic_rounding.py --steps 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import fastoptim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.problems import make_batches, make_model, train

MODES = {
    "round to nearest": {"kahan_sum": False},
    "Kahan summation": {"kahan_sum": True},
    "stochastic rounding": {"stochastic_rounding": True},
}


def run(dtype: torch.dtype, steps: int, **options: object) -> tuple[torch.nn.Module, list[float], int]:
    """Trains in ``dtype``; returns the model, its losses and the optimizer's state bytes."""
    torch.manual_seed(0)
    model = make_model(dtype)
    optimizer = fastoptim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, **options)
    losses = train(model, optimizer, make_batches(steps, dtype))
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return model, losses, state_bytes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    args = parser.parse_args()
    reference, reference_losses, _ = run(torch.float32, args.steps)
    start = make_model(torch.float32)
    parameters = sum(p.numel() for p in start.parameters())
    ref = torch.cat([p.detach().flatten() for p in reference.parameters()])
    moved = (ref - torch.cat([p.detach().flatten() for p in start.parameters()])).norm()
    setup = (
        f"AdamW lr {args.lr} weight decay {args.weight_decay}, {args.steps} steps, {parameters} parameters"
    )
    print(f"torch {torch.__version__}, {setup}")
    print(f"float32 final loss {reference_losses[-1]:.4f}\n")
    print("| bf16 write | distance to float32 / float32's own movement | final loss | state bytes/param |")
    print("| --- | ---: | ---: | ---: |")
    for name, options in MODES.items():
        model, losses, state_bytes = run(torch.bfloat16, args.steps, **options)
        got = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        distance = ((got - ref).norm() / moved).item()
        print(f"| {name} | {distance:.4f} | {losses[-1]:.4f} | {state_bytes / parameters:.1f} |")
