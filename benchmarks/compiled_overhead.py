"""Where a compiled step's time goes: the kernel against torch's, and the Python around it.

Two measurements, each timed interleaved in one process (``fastoptim.bench.speed``):

1. **Same tensors.** Compiled AdamW, torch's fused AdamW optimizer and torch's fused kernel
   alone (``torch._fused_adamw_`` on the compiled optimizer's own states) step the same
   parameters and gradients, so memory placement cannot explain a difference.
2. **Overhead.** Optimizers step 100 tensors of 2,000 elements, where the kernels take next to
   nothing: the step time is what each step costs beyond its kernels.

Usage::

    python benchmarks/compiled_overhead.py
    python benchmarks/compiled_overhead.py --params 20000000 --tensors 100 --rounds 20
"""

from __future__ import annotations

import argparse

import torch

import fastoptim
from fastoptim.bench.speed import make_params, time_interleaved

ADAMW = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=1e-2)


def same_tensors(n_params: int, n_tensors: int, rounds: int) -> None:
    params = make_params(n_params, n_tensors, torch.float32, seed=0)
    fused = torch.optim.AdamW(params, **ADAMW, fused=True)
    compiled = fastoptim.AdamW(params, **ADAMW, backend="compiled")
    fused.step()
    compiled.step()
    grads = [p.grad for p in params]
    exp_avgs = [compiled.state[p]["exp_avg"] for p in params]
    exp_avg_sqs = [compiled.state[p]["exp_avg_sq"] for p in params]
    steps = [torch.tensor(5.0) for _ in params]

    def fused_kernel() -> None:
        torch._fused_adamw_(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=1e-2, eps=1e-6, amsgrad=False, maximize=False,
        )  # fmt: skip

    names = ["fastoptim compiled AdamW", "torch fused AdamW", "torch._fused_adamw_ alone"]
    times = time_interleaved([compiled.step, fused.step, fused_kernel], rounds)
    print(f"\n### Same tensors: {n_params / 1e6:.0f}M parameters in {n_tensors} tensors, fp32\n")
    print("| step | ms | x the fused kernel |")
    print("| --- | ---: | ---: |")
    for name, seconds in zip(names, times, strict=True):
        print(f"| {name} | {seconds * 1e3:.2f} | {seconds / times[2]:.2f} |")


def overhead(rounds: int) -> None:
    builds = {
        "torch fused AdamW": lambda ps: torch.optim.AdamW(ps, **ADAMW, fused=True),
        "fastoptim compiled AdamW": lambda ps: fastoptim.AdamW(ps, **ADAMW, backend="compiled"),
        "fastoptim compiled DAdaptAdam": lambda ps: fastoptim.DAdaptAdam(ps, backend="compiled"),
        "fastoptim compiled Prodigy": lambda ps: fastoptim.Prodigy(ps, backend="compiled"),
    }
    optimizers = [build(make_params(200_000, 100, torch.float32, seed=0)) for build in builds.values()]
    for optimizer in optimizers:
        for _ in range(3):
            optimizer.step()
    times = time_interleaved([o.step for o in optimizers], rounds)
    print("\n### Overhead: 100 tensors of 2,000 elements, fp32\n")
    print("| step | ms |")
    print("| --- | ---: |")
    for name, seconds in zip(builds, times, strict=True):
        print(f"| {name} | {seconds * 1e3:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    same_tensors(args.params, args.tensors, args.rounds)
    overhead(args.rounds * 5)


if __name__ == "__main__":
    main()
