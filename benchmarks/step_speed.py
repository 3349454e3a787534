"""Times ``optimizer.step()`` for fastoptim's backends and its peers, against the roofline.

An optimizer step is memory-bound: it must read and write every parameter, gradient and state
element at least once. The roofline time is those bytes divided by the memory bandwidth measured
here on the same buffers size; each step time is printed as a multiple of it (1.0x = at the limit).

Every configuration steps the same ~20M-parameter, ~100-tensor model with fixed random
gradients, each with its own optimizer state. Configurations are timed interleaved (one step
each, round after round, the order rotated every round) after warm-up; the median per
configuration is averaged over several build orders, because where the states land in memory
moves step times by up to 2x on this kind of machine.

Usage::

    python benchmarks/step_speed.py                       # fp32 and bf16, all algorithms
    python benchmarks/step_speed.py --dtypes fp32 --algorithms adam --rounds 40
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import fastoptim

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Config:
    """One optimizer implementation to time."""

    algorithm: str
    name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    #: Bytes per parameter the step must move at minimum, by dtype size (Kahan adds a buffer).
    state_buffers: int


def _optimi(name: str, **kwargs):
    def build(params):
        import optimi

        return getattr(optimi, name)(params, triton=False, **kwargs)

    return build


def _lion_pytorch(**kwargs):
    def build(params):
        from lion_pytorch import Lion

        return Lion(params, **kwargs)

    return build


def configs() -> list[Config]:
    """fastoptim's backends and the peers, per algorithm, with matching hyperparameters."""
    adam = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
    out = []
    for algorithm, ours, torch_cls, torch_kwargs, optimi_name, extra, buffers in [
        ("adam", fastoptim.Adam, torch.optim.Adam, adam, "Adam", {}, 2),
        ("adamw", fastoptim.AdamW, torch.optim.AdamW, {**adam, "weight_decay": 1e-2}, "AdamW", {}, 2),
        ("sgd", fastoptim.SGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9), "SGD", {}, 1),
        ("lion", fastoptim.Lion, None, None, "Lion", dict(weight_decay=1e-2), 1),
    ]:
        kwargs = {**(torch_kwargs or dict(lr=1e-4)), **extra}
        for backend in ("loop", "foreach"):
            out.append(
                Config(
                    algorithm,
                    f"fastoptim {backend}",
                    lambda p, c=ours, k=kwargs, b=backend: c(p, backend=b, **k),
                    buffers,
                )
            )
        if torch_cls is not None:
            for flag in ("foreach", "fused"):
                out.append(
                    Config(
                        algorithm,
                        f"torch {flag}",
                        lambda p, c=torch_cls, k=kwargs, f=flag: c(p, **{f: True}, **k),
                        buffers,
                    )
                )
            out.append(
                Config(
                    algorithm,
                    "torch loop",
                    lambda p, c=torch_cls, k=kwargs: c(p, foreach=False, **k),
                    buffers,
                )
            )
        for foreach in (False, True):
            out.append(
                Config(
                    algorithm,
                    f"optimi {'foreach' if foreach else 'loop'}",
                    _optimi(optimi_name, foreach=foreach, **kwargs),
                    buffers,
                )
            )
        if algorithm == "lion":
            out.append(Config(algorithm, "lion-pytorch", _lion_pytorch(**kwargs), buffers))
    return out


def make_params(n_params: int, n_tensors: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Half square weight matrices, half bias vectors, about ``n_params`` elements in all."""
    layers = n_tensors // 2
    width = int((n_params / layers) ** 0.5)
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(layers):
        for shape in ((width, width), (width,)):
            p = torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype))
            p.grad = torch.randn(shape, generator=generator).to(dtype) * 1e-2
            params.append(p)
    return params


def measure_bandwidth(n_bytes: int, rounds: int = 15) -> float:
    """Best median bandwidth (bytes/s) of streaming kernels over ``n_bytes`` of float32 buffers."""
    n = max(n_bytes // 4 // 3, 1)
    a, b, c = torch.rand(n), torch.rand(n), torch.empty(n)
    kernels = {
        "add (2 reads, 1 write)": (lambda: torch.add(a, b, alpha=0.5, out=c), 3),
        "in-place add (2 reads, 1 write)": (lambda: a.add_(b, alpha=1e-9), 3),
        "copy (1 read, 1 write)": (lambda: c.copy_(a), 2),
    }
    best = 0.0
    for kernel, arrays in kernels.values():
        kernel()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            kernel()
            times.append(time.perf_counter() - start)
        best = max(best, arrays * n * 4 / statistics.median(times))
    return best


def time_configs(selected: list[Config], params: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """Builds and warms up each configuration in order, then times them interleaved."""
    runs = []
    for config in selected:
        try:
            optimizer = config.build(params)
            for _ in range(args.warmup):
                optimizer.step()
        except (RuntimeError, ValueError, TypeError) as error:
            print(f"  skipped {config.algorithm} {config.name}: {str(error).splitlines()[0]}")
            continue
        runs.append((config, optimizer, []))
    for round_index in range(args.rounds):
        # rotate the order every round: the first slot of a round runs on a colder cache
        shift = round_index % len(runs)
        for _config, optimizer, times in runs[shift:] + runs[:shift]:
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
    return {(c.algorithm, c.name): statistics.median(t) for c, _o, t in runs}


def run(args: argparse.Namespace) -> None:
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads"
    )
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        size = torch.finfo(dtype).bits // 8
        selected = [c for c in configs() if c.algorithm in args.algorithms]
        # One set of parameters and gradients for every configuration (steps with lr <= 1e-2 on
        # gradients of 1e-2 keep them finite), so that only optimizer states differ in placement.
        params = make_params(args.params, args.tensors, dtype, seed=0)
        n_params = sum(p.numel() for p in params)
        bandwidth = measure_bandwidth(n_params * 4 * 4)
        # Where tensors land in memory moves step times by up to 2x on this kind of machine; build
        # the states in several orders (forward, reverse, two seeded shuffles) and average.
        orders = [selected, selected[::-1]]
        for seed in range(args.orders - 2):
            shuffled = selected[:]
            random.Random(seed).shuffle(shuffled)
            orders.append(shuffled)
        results = []
        for order in orders[: args.orders]:
            results.append(time_configs(order, params, args))
            gc.collect()
        print(
            f"\n### {dtype_name}: {n_params / 1e6:.1f}M parameters in {len(params)} tensors, "
            f"bandwidth {bandwidth / 1e9:.1f} GB/s, mean over {len(results)} build orders of the median "
            f"of {args.rounds} "
            "interleaved steps\n"
        )
        print("| algorithm | implementation | bytes/param | ms/step | x roofline | x fastest eager peer |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for algorithm in args.algorithms:
            rows = [
                (c, statistics.mean(r[key] for r in results))
                for c in selected
                if c.algorithm == algorithm and (key := (c.algorithm, c.name)) in results[0]
            ]
            peers = [t for c, t in rows if not c.name.startswith("fastoptim") and "fused" not in c.name]
            best_peer = min(peers) if peers else float("nan")
            for config, seconds in rows:
                kahan = 1 if dtype != torch.float32 and config.name.startswith(("fastoptim", "optimi")) else 0
                per_param = size * (3 + 2 * (config.state_buffers + kahan))
                roofline = per_param * n_params / bandwidth
                print(
                    f"| {algorithm} | {config.name} | {per_param} | {seconds * 1e3:.2f} | "
                    f"{seconds / roofline:.2f} | {seconds / best_peer:.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--tensors", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--orders", type=int, default=4, help="build orders to average (>= 2)")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["adam", "adamw", "sgd", "lion"],
        choices=["adam", "adamw", "sgd", "lion"],
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
