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
import importlib
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Config:
    """One optimizer implementation to time."""

    algorithm: str
    name: str
    build: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    #: Elements per parameter the step must read or write at minimum (Kahan adds 2).
    elements: int


def _peer(module: str, name: str, **kwargs):
    """A peer implementation ``module.name(params, **kwargs)``, imported when built."""

    def build(params):
        return getattr(importlib.import_module(module), name)(params, **kwargs)

    return build


ADAM = dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-6)
SGD = dict(lr=1e-2, momentum=0.9)

#: algorithm -> (fastoptim class, its kwargs, minimum bytes per element / dtype size, peers).
#: Peers: name -> (module, class, kwargs); "official" marks the authors' package.
ALGORITHMS = {
    "adam": (
        "Adam",
        ADAM,
        7,
        {
            "torch foreach": ("torch.optim", "Adam", {**ADAM, "foreach": True}),
            "torch fused": ("torch.optim", "Adam", {**ADAM, "fused": True}),
            "torch loop": ("torch.optim", "Adam", {**ADAM, "foreach": False}),
            "optimi loop": ("optimi", "Adam", {**ADAM, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "Adam", {**ADAM, "foreach": True, "triton": False}),
        },
    ),
    "adamw": (
        "AdamW",
        {**ADAM, "weight_decay": 1e-2},
        7,
        {
            "torch foreach": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "foreach": True}),
            "torch fused": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "fused": True}),
            "torch loop": ("torch.optim", "AdamW", {**ADAM, "weight_decay": 1e-2, "foreach": False}),
            "optimi loop": ("optimi", "AdamW", {**ADAM, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "AdamW", {**ADAM, "foreach": True, "triton": False}),
        },
    ),
    "sgd": (
        "SGD",
        SGD,
        5,
        {
            "torch foreach": ("torch.optim", "SGD", {**SGD, "foreach": True}),
            "torch fused": ("torch.optim", "SGD", {**SGD, "fused": True}),
            "torch loop": ("torch.optim", "SGD", {**SGD, "foreach": False}),
            "optimi loop": ("optimi", "SGD", {**SGD, "foreach": False, "triton": False}),
            "optimi foreach": ("optimi", "SGD", {**SGD, "foreach": True, "triton": False}),
        },
    ),
    "lion": (
        "Lion",
        dict(lr=1e-4, weight_decay=1e-2),
        5,
        {
            "optimi loop": ("optimi", "Lion", dict(lr=1e-4, weight_decay=1e-2, foreach=False, triton=False)),
            "optimi foreach": (
                "optimi",
                "Lion",
                dict(lr=1e-4, weight_decay=1e-2, foreach=True, triton=False),
            ),
            "lion-pytorch": ("lion_pytorch", "Lion", dict(lr=1e-4, weight_decay=1e-2)),
        },
    ),
    "adopt": (
        "ADOPT",
        dict(lr=1e-3),
        7,
        {
            "official loop": ("adopt", "ADOPT", dict(lr=1e-3, foreach=False)),
            "official foreach": ("adopt", "ADOPT", dict(lr=1e-3, foreach=True)),
            "pytorch-optimizer": ("pytorch_optimizer", "ADOPT", dict(lr=1e-3)),
        },
    ),
    "adan": (
        "Adan",
        dict(lr=1e-3, weight_decay=0.02),
        11,
        {
            "pytorch-optimizer loop": (
                "pytorch_optimizer",
                "Adan",
                dict(lr=1e-3, weight_decay=0.02, foreach=False),
            ),
            "pytorch-optimizer foreach": (
                "pytorch_optimizer",
                "Adan",
                dict(lr=1e-3, weight_decay=0.02, foreach=True),
            ),
        },
    ),
    "adamp": (
        "AdamP",
        dict(lr=1e-3, weight_decay=1e-2),
        7,
        {
            "official": ("adamp", "AdamP", dict(lr=1e-3, weight_decay=1e-2)),
            "pytorch-optimizer": ("pytorch_optimizer", "AdamP", dict(lr=1e-3, weight_decay=1e-2)),
        },
    ),
    # growth_rate=1 keeps d finite on the benchmark's fixed gradients; the operations are the same
    "prodigy": (
        "Prodigy",
        dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0),
        10,
        {
            "official": ("prodigyopt", "Prodigy", dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0)),
            "pytorch-optimizer": (
                "pytorch_optimizer",
                "Prodigy",
                dict(lr=1.0, weight_decay=1e-2, growth_rate=1.0),
            ),
        },
    ),
    "dadapt_adam": (
        "DAdaptAdam",
        dict(growth_rate=1.0),
        9,
        {"official": ("dadaptation", "DAdaptAdam", dict(growth_rate=1.0))},
    ),
    "dadapt_sgd": (
        "DAdaptSGD",
        dict(growth_rate=1.0),
        9,
        {"official": ("dadaptation", "DAdaptSGD", dict(growth_rate=1.0))},
    ),
    "dadapt_lion": (
        "DAdaptLion",
        dict(lr=1e-3),
        7,
        {"official": ("dadaptation", "DAdaptLion", dict(lr=1e-3))},
    ),
    "dadapt_adan": (
        "DAdaptAdan",
        dict(growth_rate=1.0),
        13,
        {"official": ("dadaptation", "DAdaptAdan", dict(growth_rate=1.0))},
    ),
    "sgdp": (
        "SGDP",
        dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
        5,
        {
            "official": ("adamp", "SGDP", dict(lr=1e-2, momentum=0.9, weight_decay=1e-4)),
            "pytorch-optimizer": (
                "pytorch_optimizer",
                "SGDP",
                dict(lr=1e-2, momentum=0.9, weight_decay=1e-4),
            ),
        },
    ),
}


def configs() -> list[Config]:
    """fastoptim's backends and the peers, per algorithm, with matching hyperparameters."""
    out = []
    for algorithm, (class_name, kwargs, elements, peers) in ALGORITHMS.items():
        for backend in ("loop", "foreach"):
            build = _peer("fastoptim", class_name, **kwargs, backend=backend)
            out.append(Config(algorithm, f"fastoptim {backend}", build, elements))
        for name, (module, peer_class, peer_kwargs) in peers.items():
            out.append(Config(algorithm, name, _peer(module, peer_class, **peer_kwargs), elements))
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
                per_param = size * (config.elements + 2 * kahan)
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
        default=list(ALGORITHMS),
        choices=list(ALGORITHMS),
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
