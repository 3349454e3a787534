"""An optimizer step under FSDP2 against one process, and the share of it spent communicating.

Each rank of an FSDP2 run steps its shards (half of every weight on 2 ranks), then takes part in
the step's reductions (D-Adaptation's and Prodigy's sums, AdamP's projection statistics). The
script times ``optimizer.step()`` alone (gradients set once, as after a backward pass): in one
process on the whole model, and on each rank under FSDP2, where it also times the collectives
fastoptim issues (:class:`fastoptim.distributed.Sharding`'s ``all_reduce`` and ``max_and_sum``).

Usage::

    python benchmarks/distributed_step.py                      # CPU, gloo, 2 processes
    python benchmarks/distributed_step.py --device cuda        # NCCL over the GPUs (one: a 1-rank mesh)
    python benchmarks/distributed_step.py --algorithms AdamW Prodigy --layers 8 --width 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastoptim
from fastoptim.distributed import Sharding

#: Threads of the one-process run, shared out among the ranks on CPU.
THREADS = torch.get_num_threads()
#: Steps before timing: the first creates the state (and compiles, on the compiled backend).
WARMUP = 2
KWARGS: dict[str, dict[str, Any]] = {
    "AdamW": {"lr": 1e-3, "weight_decay": 1e-2},
    "Prodigy": {"lr": 1.0},
    "DAdaptAdam": {"lr": 1.0},
    "AdamP": {"lr": 1e-3},
    "Adan": {"lr": 1e-3, "max_grad_norm": 1.0},
}


def _model(args: argparse.Namespace, device: torch.device) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(args.width, args.width) for _ in range(args.layers)]
    return nn.Sequential(*layers).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(optimizer: Any, device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _with_gradients(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
        if hasattr(p, "device_mesh"):  # FSDP2: the rank's shard of that gradient
            from torch.distributed.tensor import distribute_tensor

            p.grad = distribute_tensor(p.grad, p.device_mesh, p.placements, src_data_rank=None)


class _CommunicationTimer:
    """Wraps :class:`Sharding`'s collectives to add up the time spent in them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self._saved: list[tuple[str, Callable[..., Any]]] = []

    def __enter__(self) -> _CommunicationTimer:
        for name in ("all_reduce", "max_and_sum"):
            original = getattr(Sharding, name)
            self._saved.append((name, original))

            def timed(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                _sync(self.device)
                start = time.perf_counter()
                result = _original(*args, **kwargs)
                _sync(self.device)
                self.seconds += time.perf_counter() - start
                return result

            setattr(Sharding, name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved:
            setattr(Sharding, name, original)


def _rank(rank: int, world: int, args: argparse.Namespace, init: str, out: str) -> None:
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{init}", rank=rank, world_size=world)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":  # the ranks share the cores that one process uses alone
        torch.set_num_threads(max(1, THREADS // world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(args.device, (world,))
    rows = []
    for name in args.algorithms:
        model = _model(args, device)
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = getattr(fastoptim, name)(model.parameters(), backend=args.backend, **KWARGS[name])
        _with_gradients(model)
        _time_steps(optimizer, device, WARMUP)
        with _CommunicationTimer(device) as timer:
            times = _time_steps(optimizer, device, args.steps)
        rows.append((name, statistics.median(times), timer.seconds / len(times)))
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", choices=list(KWARGS), default=list(KWARGS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backend", default="foreach", help="fastoptim backend")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    world = max(torch.cuda.device_count(), 1) if args.device == "cuda" else 2
    device = torch.device(args.device)
    single = {}
    for name in args.algorithms:
        model = _model(args, device)
        optimizer = getattr(fastoptim, name)(model.parameters(), backend=args.backend, **KWARGS[name])
        _with_gradients(model)
        _time_steps(optimizer, device, WARMUP)
        single[name] = statistics.median(_time_steps(optimizer, device, args.steps))
    with tempfile.TemporaryDirectory() as directory:
        init, out = os.path.join(directory, "init"), os.path.join(directory, "out.pt")
        mp.spawn(_rank, args=(world, args, init, out), nprocs=world, join=True)
        rows = torch.load(out, weights_only=False)
    parameters = args.layers * (args.width * args.width + args.width)
    print(f"torch {torch.__version__}, {args.device}, backend {args.backend}, {world} ranks")
    size = f"{parameters / 1e6:.1f}M float32 parameters in {2 * args.layers} tensors"
    print(f"{size}, median of {args.steps} steps\n")
    print("| optimizer | one process (ms) | FSDP2 rank (ms) | communication (ms) | share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, step, communication in rows:
        share = communication / step if step else 0.0
        times = f"{single[name] * 1e3:.2f} | {step * 1e3:.2f} | {communication * 1e3:.3f}"
        print(f"| {name} | {times} | {share:.1%} |")


if __name__ == "__main__":
    main()
